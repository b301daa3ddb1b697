"""Model statistics in the shape of Triton's statistics extension, counted from real work."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.embedding.backend import ExecutionTiming

PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    name: str
    version: str
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # inputs, and the lookups' time
    cache_miss: Duration = field(default_factory=Duration)
    phases: dict[str, Duration] = field(default_factory=lambda: {p: Duration() for p in PHASES})
    batches: dict[int, dict[str, Duration]] = field(
        default_factory=lambda: defaultdict(lambda: {p: Duration() for p in PHASES})
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_execution(self, timing: ExecutionTiming, queue_ns: list[int]) -> None:
        """One forward pass, and how long each of its requests waited in the queue."""
        with self._lock:
            for ns in queue_ns:
                self.queue.add(ns)
            self.execution_count += 1
            self.inference_count += timing.batch_size
            by_phase = (timing.compute_input_ns, timing.compute_infer_ns, timing.compute_output_ns)
            for phase, ns in zip(PHASES, by_phase, strict=True):
                self.phases[phase].add(ns)
                self.batches[timing.batch_size][phase].add(ns)

    def record_cache(self, hit: bool, lookup_ns: int) -> None:
        with self._lock:
            (self.cache_hit if hit else self.cache_miss).add(lookup_ns)

    def record_request(self, ok: bool, duration_ns: int) -> None:
        with self._lock:
            (self.success if ok else self.fail).add(duration_ns)
            self.last_inference_ms = time.time_ns() // 1_000_000

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(),
                    "fail": self.fail.as_dict(),
                    "queue": self.queue.as_dict(),
                    **{p: d.as_dict() for p, d in self.phases.items()},
                    "cache_hit": self.cache_hit.as_dict(),
                    "cache_miss": self.cache_miss.as_dict(),
                },
                "batch_stats": [
                    {"batch_size": size, **{p: d.as_dict() for p, d in phases.items()}}
                    for size, phases in sorted(self.batches.items())
                ],
            }
