"""The GenRec model: vocabulary, Token Merger over a Qwen2 backbone, samples, beam search."""
