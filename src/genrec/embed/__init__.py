"""Item embeddings: item text, text and image encoders behind one interface, fusion, collaborative fine-tuning."""
