"""The evaluation gate and the MLflow model registry: decide, register, promote."""
