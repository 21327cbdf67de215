"""Training loops (DeepSpeed)."""
