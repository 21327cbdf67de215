"""Data in: the canonical schema, the log simulator, real-dataset adapters and the ingest stage."""
