"""REST transport of an infer request: reading the body within the byte limits, and
handing it to the V2 codec off the event loop when it is large or compressed."""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from app.errors import BadRequest, PayloadTooLarge
from app.inference.budgets import Reservation
from app.protocol.codec import RequestLimits, decode_request
from app.protocol.encoding import inflated_size_limit, is_encoded
from app.protocol.spec import EmbedRequestSpec

# Bodies past this size (or compressed) are inflated and parsed in a thread: tens of
# milliseconds of work that would otherwise stall every other request and the probes.
PARSE_ON_LOOP_BYTES = 256 * 1024
# How long a body whose declared length does not fit MAX_REQUEST_BYTES_IN_FLIGHT waits for
# room before its 503 (its client is held meanwhile, nothing of the body is read).
BODY_ROOM_WAIT_S = 2.0


async def read_body(request: Request, max_bytes: int, reservation: Reservation) -> bytes:
    """The raw body, refused with 413 as soon as it is known to pass max_bytes, and with
    503 when the server already holds its limit of body bytes (before reading a byte of a
    body that declares its length)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the {max_bytes}-byte limit")
        # A short wait for room before the 503: the bytes held may be a gRPC message's room
        # reserved for the milliseconds it takes to read (app/grpc_api/receive.py).
        await reservation.grow_waiting(int(declared), BODY_ROOM_WAIT_S)
    chunks = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"request body is over the {max_bytes}-byte limit")
            if received > reservation.held:  # chunked, or more than declared
                reservation.grow(received - reservation.held)
            chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer; a 400 in the access log, not a traceback
        raise BadRequest(f"client disconnected after {received} bytes of the body") from None
    return b"".join(chunks)


async def decode_body(
    body: bytes,
    encoding: str | None,
    header_length: str | None,
    limits: RequestLimits,
    reservation: Reservation,
) -> EmbedRequestSpec:
    if not is_encoded(encoding) and len(body) <= PARSE_ON_LOOP_BYTES:
        return decode_request(body, encoding, header_length, limits)[0]
    inflated_bound = 0
    if is_encoded(encoding):
        # Reserve the most the body may inflate to before inflating it; keep what it did.
        inflated_bound = inflated_size_limit(len(body), limits.max_request_bytes, limits.max_inflation_ratio)
        reservation.grow(inflated_bound)
    spec, inflated = await asyncio.to_thread(decode_request, body, encoding, header_length, limits)
    if inflated_bound:
        reservation.shrink(inflated_bound - inflated)
    return spec
