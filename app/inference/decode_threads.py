"""The threads that decode and preprocess images, at a lower scheduling priority than the
model thread. The forward's OpenMP threads meet at a barrier after every parallel region,
so a decoding thread that takes a core from one of them stalls them all: under 16 clients
DINOv2-S's in-server forward ran 10 to 20% slower than alone, far more than the few
milliseconds of decoding per image. A higher nice value lets the forward's threads preempt
decoding, which then fills the gaps instead (the scheduler still gives it every idle core).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from app.cpus import usable_cpus

log = logging.getLogger(__name__)

DECODE_NICENESS = 10  # CFS weight 110 against the model thread's 1024


def _lower_priority() -> None:
    try:
        # On Linux a thread id names one thread: only this one is lowered.
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), current + DECODE_NICENESS)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run as is
        log.debug("decoding threads keep their priority: %s", exc)


def decode_executor(threads: int | None = None) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        # The CPUs this process may use (affinity, cgroup quota), not the node's cores.
        max_workers=threads or min(32, usable_cpus() + 4),
        thread_name_prefix="decode",
        initializer=_lower_priority,
    )
