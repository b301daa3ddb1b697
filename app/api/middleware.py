"""Per-request observability (pure ASGI, no body buffering): the request id, Prometheus
request metrics by route template, and one log line per inference request."""

from __future__ import annotations

import logging
import time

from starlette.routing import Mount

from app.metrics import ServiceMetrics
from app.request_ids import new_request_id, safe_request_id

log = logging.getLogger("app.access")


class ObservabilityMiddleware:
    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        header = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        state = scope.setdefault("state", {})
        # The infer route replaces this with the V2 `id` when the body has one.
        # (Ids from clients go into logs and headers: only a safe alphabet, bounded length.)
        state["request_id"] = safe_request_id(header) or new_request_id()
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", state["request_id"].encode("latin-1")))
                message["headers"] = headers
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(elapsed)
            inference = route.endswith("/infer")
            if inference or status >= 500:
                # Never image data, URLs or query strings: the route template and counts only.
                fields = {
                    "request_id": state["request_id"],
                    "method": scope["method"],
                    "route": route,
                    "model": (scope.get("path_params") or {}).get("model_name"),
                    "images": state.get("image_count"),
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                }
                log.info("request", extra={"fields": fields})


def route_template(scope) -> str:
    """The matched route's path template (never the request's own path, whose values would
    make a metric series per request): FastAPI routes set scope["route"]; a plain Starlette
    route or a mount (the docs' static files) only its endpoint, found among the app's routes."""
    route = scope.get("route")
    if route is not None:
        return route.path
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        for candidate in getattr(scope.get("app"), "routes", ()):
            if isinstance(candidate, Mount) and candidate.app is endpoint:
                return candidate.path + "/{path}"
            if getattr(candidate, "endpoint", None) is endpoint:
                return candidate.path
    return "unmatched"
