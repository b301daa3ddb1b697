"""The cache as requests use it: a session per request asks, for each input, whether its
embedding is known (the local tier, then the shared one), being computed by another request
(the input waits for that result: coalescing), or to be computed by this request, which then
publishes it to waiters and both tiers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from app.cache.keys import entry_key
from app.cache.local import LocalCache, entry_bytes
from app.cache.shared import SharedCache
from app.embedding.pooling import PoolingStrategy
from app.inference.stats import ModelStatistics
from app.metrics import ServiceMetrics
from app.settings.server import ServerSettings

LOCAL, SHARED = "local", "shared"


class Pending:
    """An input whose embedding another request (or an earlier element of this one) is
    computing. Awaited only after this request has submitted its own work: two requests
    waiting on each other's inputs each still compute theirs."""

    def __init__(self, future: asyncio.Future):
        self._future = future

    async def result(self) -> np.ndarray | None:
        """The vector, or None when its computation was abandoned (that request failed or
        was cancelled): the input is then computed by the waiter itself."""
        # shield: a waiter whose own deadline passes must not cancel the owner's future.
        return await asyncio.shield(self._future)


class EmbeddingCache:
    def __init__(self, settings: ServerSettings, metrics: ServiceMetrics):
        self.metrics = metrics
        self.max_entry_bytes = settings.cache_max_entry_bytes
        self.local = LocalCache(settings.cache_bytes, self._evicted) if settings.cache_bytes else None
        self.shared = (
            SharedCache(
                settings.cache_url,
                settings.cache_ttl_s,
                settings.cache_timeout_ms / 1000,
                settings.cache_key_prefix,
                on_error=lambda model: metrics.cache_shared_errors.labels(model).inc(),
                on_state=lambda up: metrics.cache_shared_up.set(1 if up else 0),
            )
            if settings.cache_url
            else None
        )
        if self.shared is not None:
            metrics.cache_shared_up.set(1)
        self._in_flight: dict[bytes, asyncio.Future] = {}

    @property
    def enabled(self) -> bool:
        return self.local is not None or self.shared is not None

    def _evicted(self, model: str, size: int) -> None:
        self.metrics.cache_evictions.labels(model).inc()
        self.metrics.cache_bytes.labels(model).dec(size)

    def session(
        self,
        model: str,
        identity: str,
        modality: str,
        pooling: PoolingStrategy,
        dim: int,
        stats: ModelStatistics,
    ) -> CacheSession:
        return CacheSession(self, _Scope(model, identity, modality, pooling, dim), stats)

    def forget_model(self, model: str) -> None:
        """A model unloaded: its local entries go (its next load may come from other files;
        their keys would differ anyway, this frees the memory now)."""
        if self.local is not None:
            self.metrics.cache_bytes.labels(model).dec(self.local.drop_model(model))

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


@dataclass(frozen=True)
class _Scope:
    model: str
    identity: str
    modality: str
    pooling: PoolingStrategy
    dim: int


class CacheSession:
    """One request's use of the cache, as a context manager: `consult` for each input, then
    `assemble` (which publishes what this request computed). Leaving the block, however it
    ends (a failed image, a passed deadline), closes it: what it claimed and did not publish
    is abandoned, and waiters compute it themselves."""

    def __init__(self, cache: EmbeddingCache, scope: _Scope, stats: ModelStatistics):
        self._cache = cache
        self._scope = scope
        self._stats = stats
        self._owned: dict[int, tuple[bytes, asyncio.Future]] = {}  # input index -> key, its future

    async def consult(self, index: int, content_sha256: bytes) -> np.ndarray | Pending | None:
        """The input's embedding (unnormalised), a Pending one, or None: this request
        computes it, then publishes it."""
        started = time.perf_counter_ns()
        cache, scope, metrics = self._cache, self._scope, self._cache.metrics
        key = entry_key(scope.identity, scope.modality, content_sha256, scope.pooling)
        vector = cache.local.get(key) if cache.local is not None else None
        if vector is not None:
            return self._hit(vector, LOCAL, started)
        future = cache._in_flight.get(key)
        if future is not None:
            metrics.cache_coalesced.labels(scope.model).inc()
            return Pending(future)
        # Ours from now on: identical inputs arriving during the shared lookup wait for it.
        future = asyncio.get_running_loop().create_future()
        cache._in_flight[key] = future
        self._owned[index] = (key, future)
        if cache.shared is not None:
            vector = await cache.shared.get(key, scope.dim, scope.model)
            if vector is not None:
                del self._owned[index]
                self._settle(key, future, vector, share=False)
                return self._hit(vector, SHARED, started)
        metrics.cache_misses.labels(scope.model).inc()
        self._stats.record_cache(False, time.perf_counter_ns() - started)
        return None

    async def consult_all(self, digests: list[bytes]) -> dict[int, np.ndarray | Pending]:
        """`consult` for every input at once (the shared lookups overlap): {index: answer}
        of those this request does not compute."""
        answers = await asyncio.gather(*(self.consult(i, d) for i, d in enumerate(digests)))
        return {i: answer for i, answer in enumerate(answers) if answer is not None}

    async def assemble(
        self,
        count: int,
        computed: list[int],
        answered: dict[int, np.ndarray | Pending],
        compute_first: Callable[[], Awaitable[np.ndarray]],
        compute_again: Callable[[list[int]], Awaitable[np.ndarray]],
    ) -> np.ndarray:
        """[count, D] unnormalised rows: the `computed` inputs run now (`compute_first`) and
        are published, the `answered` ones come from the cache or from the request computing
        them. This request's own work is submitted before it waits for anyone else's, so
        two requests never wait on each other; an input whose computation was abandoned is
        computed here (`compute_again`). Closes the session."""
        rows = np.empty((count, self._scope.dim), np.float32)
        try:
            if computed:
                vectors = await compute_first()
                rows[computed] = vectors
                self.publish(computed, vectors)
        finally:
            self.close()
        abandoned = []
        for index, answer in answered.items():
            vector = await answer.result() if isinstance(answer, Pending) else answer
            if vector is None:
                abandoned.append(index)
            else:
                rows[index] = vector
        if abandoned:
            rows[abandoned] = await compute_again(abandoned)
        return rows

    def _hit(self, vector: np.ndarray, tier: str, started: int) -> np.ndarray:
        self._cache.metrics.cache_hits.labels(self._scope.model, tier).inc()
        self._stats.record_cache(True, time.perf_counter_ns() - started)
        return vector

    def publish(self, indices: list[int], rows: np.ndarray) -> None:
        """The rows this request computed for its inputs `indices` (unnormalised): to the
        inputs waiting for them, the local tier and (in the background) the shared one."""
        shared = []
        for index, row in zip(indices, rows, strict=True):
            owned = self._owned.pop(index, None)
            if owned is None:
                continue
            key, future = owned
            vector = np.array(row, dtype=np.float32)  # its own memory: the batch's array goes
            if self._settle(key, future, vector, share=True):
                shared.append((key, vector))
        if shared and self._cache.shared is not None:
            self._cache.shared.put_later(shared, self._scope.model)

    def _settle(self, key: bytes, future: asyncio.Future, vector: np.ndarray, share: bool) -> bool:
        """Answer the waiters and keep the entry locally; whether it may be shared."""
        cache = self._cache
        if cache._in_flight.get(key) is future:
            del cache._in_flight[key]
        if not future.done():
            future.set_result(vector)
        storable = entry_bytes(vector) <= cache.max_entry_bytes and bool(np.isfinite(vector).all())
        if storable and cache.local is not None:
            added = cache.local.put(key, vector, self._scope.model)
            cache.metrics.cache_bytes.labels(self._scope.model).inc(added)
        return storable and share

    def __enter__(self) -> CacheSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for key, future in self._owned.values():
            if self._cache._in_flight.get(key) is future:
                del self._cache._in_flight[key]
            if not future.done():
                future.set_result(None)  # abandoned: each waiter computes the input itself
        self._owned.clear()
