"""The in-process tier: an LRU of embeddings bounded in bytes (CACHE_BYTES). Used from the
event loop only, so it needs no lock."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

# What one entry costs beyond its vector: the key, the array object, the dict's node.
ENTRY_OVERHEAD_BYTES = 240


class LocalCache:
    def __init__(self, max_bytes: int, on_evict: Callable[[str, int], None] | None = None):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, tuple[np.ndarray, str]] = OrderedDict()
        self._on_evict = on_evict  # (model, bytes) of each entry pushed out by a newer one

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> np.ndarray | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, vector: np.ndarray, model: str) -> int:
        """Store `vector` (kept as given: callers pass a row they no longer write to); the
        bytes it added (0 when it cannot fit at all)."""
        size = entry_bytes(vector)
        if size > self.max_bytes:
            return 0
        if key in self._entries:
            self._entries.move_to_end(key)
            return 0
        while self.bytes + size > self.max_bytes:
            _, (old, owner) = self._entries.popitem(last=False)
            self.bytes -= entry_bytes(old)
            if self._on_evict is not None:
                self._on_evict(owner, entry_bytes(old))
        self._entries[key] = (vector, model)
        self.bytes += size
        return size

    def drop_model(self, model: str) -> int:
        """Forget every entry of `model` (unloaded: its next load may come from other files);
        the bytes freed."""
        keys = [key for key, (_, owner) in self._entries.items() if owner == model]
        freed = 0
        for key in keys:
            vector, _ = self._entries.pop(key)
            freed += entry_bytes(vector)
        self.bytes -= freed
        return freed


def entry_bytes(vector: np.ndarray) -> int:
    return vector.nbytes + ENTRY_OVERHEAD_BYTES
