"""The embedding cache: an in-process LRU (CACHE_BYTES), an optional shared tier in Redis
(CACHE_URL), and the coalescing of identical inputs in flight. Keyed by the input's bytes
and everything about the model that changes its answer (keys.py)."""
