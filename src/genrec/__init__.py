"""genrec: a GenRec-style generative recommender pipeline."""
__version__ = "0.1.0"
