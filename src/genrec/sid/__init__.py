"""Semantic IDs: RQ-KMeans codebooks, collision-free item -> (s1, s2, s3) codes, and the prefix trie."""
