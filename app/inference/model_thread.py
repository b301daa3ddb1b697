"""Where the model loop runs. torch's OpenMP parallel regions cost much more when launched
from a thread other than the process's main thread (MobileNetV2, batch 1, 2 threads:
17.5 ms from the main thread, 41.5 ms from another). `python -m app` therefore serves
HTTP from a thread and hands the main thread to the model loop; embedded uses (tests)
keep a thread of its own."""

from __future__ import annotations

import queue
import threading
from typing import Protocol

from app.inference.batcher import DynamicBatcher


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
