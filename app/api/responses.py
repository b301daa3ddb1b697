"""JSON responses written by orjson (FastAPI's encoder is too slow for embedding lists)."""

from __future__ import annotations

import orjson
from fastapi.responses import Response


class JSONBytesResponse(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
