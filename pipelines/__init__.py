"""The genrec KFP pipeline, its compiler entry and its local runner."""
