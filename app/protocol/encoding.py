"""Content-Encoding of request bodies (tritonclient compresses header and binary together)."""

from __future__ import annotations

import zlib

from app.errors import BadRequest, PayloadTooLarge

# Small bodies may inflate by any ratio (a JSON of a few URLs compresses 10 to 20 times).
RATIO_FREE_BYTES = 1024 * 1024


def is_encoded(encoding: str | None) -> bool:
    return (encoding or "identity").strip().lower() not in ("", "identity")


def inflated_size_limit(compressed: int, max_bytes: int, max_ratio: float | None) -> int:
    """The most a compressed body of `compressed` bytes may inflate to."""
    if max_ratio is None:
        return max_bytes
    return min(max_bytes, max(RATIO_FREE_BYTES, int(compressed * max_ratio)))


def decode_content(
    body: bytes, encoding: str | None, max_bytes: int, max_ratio: float | None = None
) -> bytes:
    """Undo gzip or deflate, refusing to inflate past max_bytes or past max_ratio times the
    compressed size (zip bombs: gzip reaches about 1000:1)."""
    if encoding is None or not is_encoded(encoding):
        return body
    encoding = encoding.strip().lower()
    limit = inflated_size_limit(len(body), max_bytes, max_ratio)
    wbits_options: tuple[int, ...]
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
            return _inflate(body, wbits, limit, _too_large_message(len(body), limit, max_bytes))
        except zlib.error as exc:
            last_error = exc
    raise BadRequest(f"body is not valid {encoding} data: {last_error}")


def _too_large_message(compressed: int, limit: int, max_bytes: int) -> str:
    if limit >= max_bytes:
        return f"decompressed body is larger than the {max_bytes}-byte limit"
    return (
        f"decompressed body is larger than {limit} bytes, the limit for {compressed} compressed bytes "
        "(MAX_INFLATION_RATIO)"
    )


def _inflate(body: bytes, wbits: int, limit: int, too_large: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    # zlib stops at limit + 1 bytes: a bomb is never inflated further than that.
    out = inflater.decompress(body, limit + 1)
    if inflater.unconsumed_tail or len(out) > limit:
        raise PayloadTooLarge(too_large)
    out += inflater.flush()
    if len(out) > limit:
        raise PayloadTooLarge(too_large)
    if not inflater.eof:
        raise zlib.error("compressed stream is truncated")
    return out
