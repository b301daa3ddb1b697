"""The shared tier: embeddings in Redis or Valkey (CACHE_URL), so that one replica's work
answers the others. It must never make a request fail or wait long: every call has a short
timeout (CACHE_TIMEOUT_MS); a failure counts an error and, if the server looks down, the
tier is skipped for RETRY_AFTER_S, logged once when it goes down and once when it is back.
What comes back is checked (layout, size, finite values): anything else is a miss."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"EMB1"  # then the dimension (uint32, little-endian), then float32 little-endian values
HEADER = struct.Struct("<4sI")
RETRY_AFTER_S = 2.0
# A timeout can be one slow answer on a busy machine; a refused connection is not.
TIMEOUTS_BEFORE_DOWN = 3
MAX_PENDING_ENTRIES = 4096  # entries waiting to be written; past it new ones are not shared (a slow server)
WRITE_BATCH = 64  # entries per pipelined write
MAX_CONNECTIONS = 64


def encode_entry(vector: np.ndarray) -> bytes:
    values = np.ascontiguousarray(vector, dtype="<f4")
    return HEADER.pack(MAGIC, values.shape[0]) + values.tobytes()


def decode_entry(value: bytes | None, dim: int) -> np.ndarray | None:
    """The vector, or None for anything that is not exactly a `dim`-vector of finite float32."""
    if not value or len(value) != HEADER.size + 4 * dim:
        return None
    magic, stored_dim = HEADER.unpack_from(value)
    if magic != MAGIC or stored_dim != dim:
        return None
    vector = np.frombuffer(value, dtype="<f4", offset=HEADER.size).astype(np.float32)
    return vector if np.isfinite(vector).all() else None


def describe_url(url: str) -> str:
    """The server for the log, without its password."""
    parts = urlsplit(url)
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}{parts.path}"
    return f"{parts.scheme}://{where}"


class SharedCache:
    def __init__(
        self,
        url: str,
        ttl_s: float,
        timeout_s: float,
        key_prefix: str,
        on_error: Callable[[str], None],
        on_state: Callable[[bool], None],
    ):
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.where = describe_url(url)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.timeout_s = timeout_s
        self.prefix = key_prefix.encode()
        self._on_error = on_error  # (model): one failed call
        self._on_state = on_state  # (up): the tier went down or came back
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,  # waiting for a free connection counts against the same budget
            # Reads are bounded by each call's own asyncio timeout (one timer, not two).
            socket_timeout=None,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # no retries: a miss is cheaper than waiting
        )
        self._client = Redis(connection_pool=pool)
        self._down_until = 0.0
        self._down = False
        self._timeouts_in_a_row = 0
        # Entries to write, in one background task that sends whatever has gathered in one
        # pipeline: under load, one round trip carries many requests' entries.
        self._pending: deque[tuple[bytes, np.ndarray, str]] = deque()
        self._writer: asyncio.Task | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def get(self, key: bytes, dim: int, model: str) -> np.ndarray | None:
        """The stored vector, or None (absent, invalid, or the server is down or slow). At most
        the entry's expected size is read: a large value under our key costs nothing."""
        if not self.available:
            return None
        expected = HEADER.size + 4 * dim
        try:
            async with asyncio.timeout(self.timeout_s):
                value = await self._client.getrange(self._key(key), 0, expected)
        except Exception as exc:  # noqa: BLE001 - any failure of the cache is a miss
            self._failed(exc, model)
            return None
        self._succeeded()
        return decode_entry(value if isinstance(value, bytes) else None, dim)

    def put_later(self, entries: list[tuple[bytes, np.ndarray]], model: str) -> None:
        """Store the entries in the background: the answer does not wait for them."""
        if not self.available or len(self._pending) + len(entries) > MAX_PENDING_ENTRIES:
            return
        self._pending.extend((key, vector, model) for key, vector in entries)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending and self.available:
            batch = [self._pending.popleft() for _ in range(min(WRITE_BATCH, len(self._pending)))]
            try:
                async with asyncio.timeout(self.timeout_s):
                    if len(batch) == 1:  # one entry: a plain SET costs less than a pipeline
                        key, vector, _ = batch[0]
                        await self._client.set(self._key(key), encode_entry(vector), px=self.ttl_ms)
                    else:
                        async with self._client.pipeline(transaction=False) as pipe:
                            for key, vector, _ in batch:
                                pipe.set(self._key(key), encode_entry(vector), px=self.ttl_ms)
                            await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - an entry not shared is only a later miss elsewhere
                self._failed(exc, batch[0][2])
                continue
            self._succeeded()
        self._pending.clear()  # the cache went down: what is left is not shared

    def _key(self, key: bytes) -> bytes:
        return self.prefix + key.hex().encode()

    def _failed(self, exc: BaseException, model: str) -> None:
        self._on_error(model)
        if isinstance(exc, TimeoutError):
            self._timeouts_in_a_row += 1
            if self._timeouts_in_a_row < TIMEOUTS_BEFORE_DOWN:
                return
        self._down_until = time.monotonic() + RETRY_AFTER_S
        if not self._down:
            self._down = True
            self._on_state(False)
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "shared cache %s is down (%s): serving without it, trying again every %g s",
                self.where,
                reason,
                RETRY_AFTER_S,
            )

    def _succeeded(self) -> None:
        self._timeouts_in_a_row = 0
        if self._down:
            self._down = False
            self._on_state(True)
            log.info("shared cache %s is back", self.where)

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._writer, self.timeout_s * 4)
        await self._client.aclose()
        await self._client.connection_pool.disconnect()
