"""One place that maps errors to HTTP: always `{"error": "..."}` (tritonclient and the kserve
SDK read that key; FastAPI's `{"detail": ...}` would reach them as an undecodable answer)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.responses import JSONBytesResponse
from app.errors import ServiceError, release_frames

log = logging.getLogger(__name__)


def error_response(status_code: int, message: str, headers: dict | None = None) -> JSONBytesResponse:
    return JSONBytesResponse({"error": message}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        release_frames(exc)
        return error_response(exc.status_code, exc.message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for error in exc.errors()[:3]:
            where = ".".join(str(p) for p in error.get("loc", ())) or "request"
            parts.append(f"{where}: {error.get('msg')}")
        return error_response(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        release_frames(exc)
        return error_response(500, f"internal error: {type(exc).__name__}")
