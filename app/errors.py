"""Domain errors. Each carries the HTTP status it maps to; app.api.errors does the mapping."""

from __future__ import annotations


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


class ImageError(BadRequest):
    """An image that cannot be fetched or decoded; wrapped in InputError with its index."""


class UnsupportedPooling(BadRequest):
    pass


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
