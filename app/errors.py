"""Domain errors. Each carries the HTTP status it maps to; app.api.errors does the mapping."""

from __future__ import annotations

import traceback


class ServiceError(Exception):
    status_code = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status_code = 400


class InputError(BadRequest):
    """A problem with one element of one input tensor: the message names both."""

    def __init__(self, input_name: str, index: int, reason: str):
        super().__init__(f"input '{input_name}' element {index}: {reason}")
        self.input_name = input_name
        self.index = index
        self.reason = reason


class InvalidField(BadRequest):
    """A request field with a value this server cannot honour: `field` names it (OpenAI's
    `param`)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class ImageError(BadRequest):
    """An image that cannot be fetched or decoded; wrapped in InputError with its index."""


class UnsupportedPooling(BadRequest):
    pass


class Unauthorized(ServiceError):
    """No or wrong credentials for a call that needs them."""

    status_code = 401

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    """A call this server's configuration does not allow, whoever sends it."""

    status_code = 403


class RequestTimeout(ServiceError):
    """The client did not send its request within the server's receive timeout."""

    status_code = 408


class ModelNotFound(ServiceError):
    status_code = 404


class PayloadTooLarge(ServiceError):
    status_code = 413


class ServiceUnavailable(ServiceError):
    status_code = 503


class Overloaded(ServiceUnavailable):
    """Past a capacity bound: the client should retry shortly (Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


def release_frames(error: BaseException) -> None:
    """Clear the local variables of the frames an answered error's traceback holds, in its
    whole chain (cause, context, group members). A request that failed in a task group
    leaves a cycle (the error -> its frames -> the tasks -> the error): without this, the
    request's inputs (tens of MiB) stay in memory until the next cyclic collection,
    outside every budget that admitted them."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]  # type: ignore[list-item]
        if isinstance(current, BaseExceptionGroup):
            pending += list(current.exceptions)
