"""Graceful shutdown: on SIGTERM, readiness turns false and new requests get 503 for a
drain period (load balancers and Kubernetes endpoints stop sending), then uvicorn closes
the listener, lets in-flight requests finish and exits. The drain ends early once nothing
is in flight and no request has come for DRAIN_QUIET_S: nobody routes here any more (an
idle server stops in about a second, not SHUTDOWN_DRAIN_S)."""

from __future__ import annotations

import threading
import time

import uvicorn

# How long in-flight requests (HTTP and gRPC) may take to finish once the listeners close.
SHUTDOWN_GRACE_S = 30
DRAIN_QUIET_S = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, models, drain_s: float):
        super().__init__(config)
        self.models = models  # the ModelRegistry: draining, start_draining()
        self.drain_s = drain_s

    def handle_exit(self, sig, frame) -> None:
        if self.models.draining or self.drain_s <= 0:
            # A second signal, or no drain period: uvicorn's own (graceful, then forced) exit.
            self.models.start_draining()
            super().handle_exit(sig, frame)
            return
        self.models.start_draining()
        threading.Thread(target=self._drain_then_exit, args=(sig, frame), daemon=True).start()

    def _drain_then_exit(self, sig, frame) -> None:
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline and not self.models.quiet_for(DRAIN_QUIET_S):
            time.sleep(0.05)
        uvicorn.Server.handle_exit(self, sig, frame)
