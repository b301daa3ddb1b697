"""The inference service: from a parsed V2 request to embeddings and back (routes -> here -> embedder)."""
