"""Request ids: taken from clients (X-Request-ID, the V2 body's `id`) only when they are
safe to write into a response header and a log line; otherwise one is made up."""

from __future__ import annotations

import re
import uuid

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def safe_request_id(candidate: str | None) -> str | None:
    """`candidate` if it is a safe id (that alphabet, at most 128 characters), else None."""
    return candidate if isinstance(candidate, str) and _SAFE_ID.fullmatch(candidate) else None


def new_request_id() -> str:
    return str(uuid.uuid4())
