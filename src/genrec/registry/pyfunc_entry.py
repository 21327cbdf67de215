"""Models-from-code entry of the registered pyfunc: MLflow runs this file to build the model, so loading a
registered genrec model unpickles nothing."""

import mlflow.models

from genrec.registry.pyfunc_model import GenRecRecommender

mlflow.models.set_model(GenRecRecommender())
