"""Dynamic batching across requests: images from concurrent requests share forward passes.

Requests put their preprocessed images on a queue; one model thread takes up to
`max_batch` images, waiting at most `max_wait_s` for more only while the queue is short
of a full batch and more work is on its way, runs one forward pass and hands each request
its own rows, pooled and normalised its own way. A backend that runs several batches at
once (`concurrency` > 1) gets each batch in a thread of a small pool; the model thread
collects the next batch as soon as a slot is free.

Runtime-agnostic: images are numpy arrays, the forward pass is whatever `run_batch` the
runtime backend gives, and the backend says which of its exceptions mean out of memory.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.embedding.backend import ExecutionTiming, PoolRequest
from app.errors import ServiceUnavailable

log = logging.getLogger(__name__)

_STOP = object()


class WorkerDied(ServiceUnavailable):
    pass


@dataclass
class WorkItem:
    inputs: np.ndarray  # [n, 3, H, W] float32 images, or text tokens (PoolRequest)
    request: PoolRequest
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def count(self) -> int:
        return self.inputs.shape[0]


RunBatch = Callable[[np.ndarray, list[PoolRequest]], tuple[list[np.ndarray], ExecutionTiming]]
OnExecution = Callable[[ExecutionTiming, list[int]], None]


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int,
        max_wait_s: float,
        concurrency: int = 1,
        more_expected: Callable[[], bool] = lambda: True,
        on_execution: OnExecution | None = None,
        on_thread_start: Callable[[], None] = lambda: None,
        is_out_of_memory: Callable[[BaseException], bool] = lambda exc: isinstance(exc, MemoryError),
    ):
        self.run_batch = run_batch
        self.is_out_of_memory = is_out_of_memory
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # Waiting only pays when another request is on its way (being fetched or decoded).
        self.more_expected = more_expected
        self.on_execution = on_execution
        self.on_thread_start = on_thread_start
        self._slots = threading.BoundedSemaphore(concurrency)
        self._executor = (
            concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="batch")
            if concurrency > 1
            else None
        )
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carried: collections.deque[Any] = collections.deque()  # WorkItems, or _STOP; model thread only
        self._running = threading.Event()
        self._finished = threading.Event()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # recent forward passes

    def start(self) -> None:
        """Run the model loop in a thread of its own."""
        self.mark_starting()
        threading.Thread(target=self.run, name="batcher", daemon=True).start()

    def mark_starting(self) -> None:
        """Alive from now on, not from when a thread gets round to run()."""
        self._running.set()

    def run(self) -> None:
        """Run the model loop in the calling thread until stop() (see ModelThreadHost)."""
        self._running.set()
        try:
            self.on_thread_start()
            self._loop()
        finally:
            self._running.clear()
            self._finished.set()

    def stop(self, timeout_s: float = 30) -> None:
        if self._running.is_set():
            self._queue.put(_STOP)
            self._finished.wait(timeout_s)

    @property
    def alive(self) -> bool:
        return self._running.is_set()

    async def submit(self, inputs: np.ndarray, request: PoolRequest) -> np.ndarray:
        """The request's [n, D] embeddings; large requests are split into max_batch chunks."""
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, inputs.shape[0], self.max_batch):
            chunk = inputs[start : start + self.max_batch]
            future = loop.create_future()
            self._queue.put(WorkItem(chunk, replace(request, count=chunk.shape[0]), future, loop))
            futures.append(future)
        parts = await asyncio.gather(*futures)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # --- model thread ----------------------------------------------------------------------

    def _next(self, timeout_s: float | None):
        if self._carried:
            return self._carried.popleft()
        if timeout_s is None:
            while True:  # in short waits, so that signals reach a main thread waiting here
                item = self._next(0.5)
                if item is not None:
                    return item
        try:
            return self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _collect(self, first: WorkItem) -> list[WorkItem]:
        batch, size = [first], first.count
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            waiting = self._queue.empty() and not self._carried
            if waiting and not self.more_expected():
                break
            item = self._next(max(0.0, deadline - time.monotonic()))
            if item is None:
                break
            if item is _STOP:
                self._carried.appendleft(item)
                break
            if item.future.done():  # cancelled: its request timed out or went away
                continue
            if (
                size + item.count > self.max_batch
                or item.inputs.shape[1:] != first.inputs.shape[1:]
                or item.request.modality != first.request.modality
            ):
                self._carried.appendleft(item)  # first in the next batch
                break
            batch.append(item)
            size += item.count
        return batch

    def _loop(self) -> None:
        try:
            while True:
                # A free slot first: while every slot computes, the next batch keeps growing.
                while not self._slots.acquire(timeout=0.5):  # short waits: signals reach a main thread
                    pass
                first = self._next(None)
                if first is _STOP:
                    return
                if first.future.done():
                    self._slots.release()
                    continue
                batch = self._collect(first)
                if self._executor is None:
                    self._execute_in_slot(batch)
                else:
                    self._executor.submit(self._execute_in_slot, batch)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)  # batches in flight are answered

    def _execute_in_slot(self, batch: list[WorkItem]) -> None:
        try:
            self._execute(batch)
        except Exception:  # noqa: BLE001 - the thread must outlive any one batch
            log.exception("batch of %d requests failed", len(batch))
        except BaseException:
            # The thread is going down (the service's supervisor restarts it): answer
            # this batch's requests now rather than at their deadline.
            dead = WorkerDied("the inference worker stopped; retry the request")
            for item in batch:
                _resolve(item, exception=dead)
            raise
        finally:
            self._slots.release()

    def fail_pending(self, exception: BaseException) -> int:
        """Answer every request still queued (after the thread died); returns how many."""
        failed = 0
        while True:
            item = self._next(0)
            if item is None:
                return failed
            if item is not _STOP:
                _resolve(item, exception=exception)
                failed += 1

    def _execute(self, batch: list[WorkItem]) -> None:
        started = time.perf_counter_ns()
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([item.inputs for item in batch])
        try:
            results = self._run(
                inputs, [item.request for item in batch], [started - i.enqueued_ns for i in batch]
            )
        except Exception as exc:  # noqa: BLE001
            if len(batch) == 1:
                item = batch[0]
                try:
                    _resolve(item, result=self._split_after(exc, item.inputs, item.request))
                except Exception as final:  # noqa: BLE001
                    _resolve(item, exception=final)
                return
            # Run each request alone: only the one that breaks the model fails.
            for item in batch:
                try:
                    _resolve(
                        item, result=self._run_alone(item.inputs, item.request, started - item.enqueued_ns)
                    )
                except Exception as final:  # noqa: BLE001
                    _resolve(item, exception=final)
            return
        for item, result in zip(batch, results, strict=True):
            _resolve(item, result=result)

    def _run(self, inputs: np.ndarray, requests: list[PoolRequest], queue_ns: list[int]) -> list[np.ndarray]:
        results, timing = self.run_batch(inputs, requests)
        self.batch_sizes.append(timing.batch_size)
        if self.on_execution is not None:
            self.on_execution(timing, queue_ns)
        return results

    def _run_alone(self, inputs: np.ndarray, request: PoolRequest, queue_ns: int) -> np.ndarray:
        try:
            return self._run(inputs, [request], [queue_ns])[0]
        except Exception as exc:  # noqa: BLE001
            return self._split_after(exc, inputs, request)

    def _split_after(self, exc: Exception, inputs: np.ndarray, request: PoolRequest) -> np.ndarray:
        """After `exc` on these images: out of memory is retried in halves, the rest raised."""
        if not self.is_out_of_memory(exc) or inputs.shape[0] == 1:
            raise exc
        log.warning("out of memory on %d inputs: retrying in halves", inputs.shape[0])
        half = inputs.shape[0] // 2
        parts = [
            self._run_alone(part, replace(request, count=part.shape[0]), 0)
            for part in (inputs[:half], inputs[half:])
        ]
        return np.concatenate(parts)


def _resolve(item: WorkItem, result=None, exception: BaseException | None = None) -> None:
    def settle():
        if item.future.done():
            return
        if exception is not None:
            item.future.set_exception(exception)
        else:
            item.future.set_result(result)

    try:
        item.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is closed: nobody waits for this answer any more
        pass
