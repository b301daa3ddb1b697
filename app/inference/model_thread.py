"""Where torch runs. Two measured effects decide it (MobileNetV2, 2 cores, 2 intra-op threads):

- The same forward is slower from a thread other than the process's main thread (batch 8:
  116 to 122 ms from the main thread, 157 to 182 ms from another), so `python -m app` serves
  HTTP from a thread and hands the main thread to the model loop; embedded uses (tests)
  keep a thread of their own.
- Every thread that runs a torch op keeps an OpenMP team for as long as it lives; with more
  OpenMP threads alive than cores, libgomp stops spinning between parallel regions and
  every forward slows down (batch 1: 18 ms -> 36 to 47 ms). Loading therefore runs in a
  thread that ends, and decoding threads run no torch op.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from app.inference.batcher import DynamicBatcher

T = TypeVar("T")


async def run_in_passing_thread(function: Callable[[], T]) -> T:
    """`function()` in a thread that ends when it returns and takes its OpenMP team with it
    (see above); a pooled executor thread would keep its team for good."""
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome.set_result(function())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome.set_exception(exc)

    thread = threading.Thread(target=run, name="model-loader", daemon=True)
    thread.start()
    result = await asyncio.wrap_future(outcome)
    await asyncio.to_thread(thread.join)  # its OpenMP team is gone before the first forward
    return result


class ModelHost(Protocol):
    def host(self, batcher: DynamicBatcher) -> None: ...


class OwnThread:
    """Each batcher runs in a new thread."""

    def host(self, batcher: DynamicBatcher) -> None:
        batcher.start()


class MainThreadHost:
    """Batchers are handed to the thread that calls serve() (the process's main thread)."""

    def __init__(self) -> None:
        self._batchers: queue.SimpleQueue[DynamicBatcher] = queue.SimpleQueue()

    def host(self, batcher: DynamicBatcher) -> None:
        batcher.mark_starting()  # alive at once: the main thread picks it up within a poll
        self._batchers.put(batcher)

    def serve(self, keep_going: threading.Event | None = None, poll_s: float = 0.2) -> None:
        """Run each handed batcher's loop here, one after another, while keep_going is set."""
        while keep_going is None or keep_going.is_set():
            try:
                batcher = self._batchers.get(timeout=poll_s)
            except queue.Empty:
                continue
            try:
                batcher.run()
            except BaseException:  # noqa: BLE001 - the service's supervisor hosts a new one
                continue
