"""Content-Encoding of request bodies (tritonclient compresses header and binary together)."""

from __future__ import annotations

import zlib

from app.errors import BadRequest, PayloadTooLarge


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo gzip or deflate, refusing to inflate past max_bytes (zip bombs)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits_options = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some clients send raw deflate: accept both.
        wbits_options = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or identity")
    last_error: zlib.error | None = None
    for wbits in wbits_options:
        try:
            return _inflate(body, wbits, max_bytes)
        except zlib.error as exc:
            last_error = exc
    raise BadRequest(f"body is not valid {encoding} data: {last_error}")


def _inflate(body: bytes, wbits: int, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, max_bytes + 1)
    if inflater.unconsumed_tail or len(out) > max_bytes:
        raise PayloadTooLarge(f"decompressed body is larger than the {max_bytes}-byte limit")
    out += inflater.flush()
    if len(out) > max_bytes:
        raise PayloadTooLarge(f"decompressed body is larger than the {max_bytes}-byte limit")
    if not inflater.eof:
        raise zlib.error("compressed stream is truncated")
    return out
