"""Bounds on the memory that requests hold at once, so that no burst of requests can take a
pod's memory: request body bytes (refused past the bound: 503 + Retry-After, the client
retries) and decoded pixels (waited for: decoding is short, and a refusal would waste the
download and the base64 decoding already done)."""

from __future__ import annotations

import asyncio
import collections
import threading

from app.errors import Overloaded


class ByteBudget:
    """Body bytes held by requests in flight. Used from the event loop only."""

    def __init__(self, capacity: int, what: str, setting: str):
        self.capacity = capacity
        self.used = 0
        self.what = what
        self.setting = setting
        self._waiters: list[asyncio.Future] = []

    def reserve(self, count: int) -> int:
        if self.used + count > self.capacity:
            raise self._full()
        self.used += count
        return count

    async def reserve_waiting(self, count: int, timeout_s: float) -> int:
        """Reserve once `count` fits, waiting up to timeout_s (then 503): for a transport
        whose client waits under flow control until the bytes are taken (gRPC)."""
        count = min(count, self.capacity)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.used + count > self.capacity:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._full()
            woken = loop.create_future()
            self._waiters.append(woken)
            try:
                await asyncio.wait_for(woken, remaining)
            except TimeoutError:
                pass
            finally:
                if woken in self._waiters:
                    self._waiters.remove(woken)
        self.used += count
        return count

    def release(self, count: int) -> None:
        self.used -= count
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each checks again whether its bytes fit now
            if not waiter.done():
                waiter.set_result(None)

    def _full(self) -> Overloaded:
        return Overloaded(
            f"server is holding {self.used} bytes of {self.what}, at its limit of {self.capacity} "
            f"({self.setting}); retry shortly"
        )


class Reservation:
    """What one request holds of a ByteBudget; released once, whatever happens."""

    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.held = 0

    def grow(self, count: int) -> None:
        self.held += self.budget.reserve(count)

    async def grow_waiting(self, count: int, timeout_s: float) -> None:
        self.held += await self.budget.reserve_waiting(count, timeout_s)

    def shrink(self, count: int) -> None:
        count = min(count, self.held)
        self.budget.release(count)
        self.held -= count

    def release(self) -> None:
        self.budget.release(self.held)
        self.held = 0


class WeightedSemaphore:
    """An asyncio semaphore whose holders take different weights, served first come, first
    served (a large image is not starved by a stream of small ones). A weight over the
    capacity is clamped to it: such an image decodes alone.

    Waiting and releasing happen on the event loop; `try_acquire` may also be called from a
    decoding thread (which then decodes at once, without a round trip through the loop), so
    the counts are guarded by a lock."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.available = capacity
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, weight: int) -> int | None:
        """The weight taken if it fits now and nobody waits ahead of it, else None."""
        weight = max(0, min(weight, self.capacity))
        with self._lock:
            if not self._waiters and weight <= self.available:
                self.available -= weight
                return weight
        return None

    async def acquire(self, weight: int) -> int:
        taken = self.try_acquire(weight)
        if taken is not None:
            return taken
        weight = max(0, min(weight, self.capacity))
        future = asyncio.get_running_loop().create_future()
        entry = (weight, future)
        with self._lock:
            self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(weight)  # granted just as the waiter was cancelled
            else:
                with self._lock:
                    self._waiters.remove(entry)
                self._wake()  # the head may have left: those behind it may fit now
            raise
        return weight

    def release(self, weight: int) -> None:
        with self._lock:
            self.available += weight
        self._wake()

    def _wake(self) -> None:
        granted = []
        with self._lock:
            while self._waiters and self._waiters[0][0] <= self.available:
                weight, future = self._waiters.popleft()
                if not future.done():
                    self.available -= weight
                    granted.append(future)
        for future in granted:
            future.set_result(None)
