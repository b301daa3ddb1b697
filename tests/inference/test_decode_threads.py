"""Decoding threads yield the cores to the model thread."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from app.inference.decode_threads import DECODE_NICENESS, decode_executor


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_decoding_threads_run_at_a_lower_priority_than_the_rest():
    def niceness():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = niceness()
    with decode_executor(2) as threads:
        theirs = {threads.submit(niceness).result() for _ in range(4)}
    assert theirs == {min(19, mine + DECODE_NICENESS)}
    assert niceness() == mine  # the calling thread is left as it was
