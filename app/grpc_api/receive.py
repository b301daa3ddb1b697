"""Reading a ModelInfer message under the limits REST bodies live under. The server hands
this code the message as it came off the wire (grpc's own decompression is off), so that:

- its bytes are reserved in MAX_REQUEST_BYTES_IN_FLIGHT before it is read: the call waits
  for room (the client waits under HTTP/2 flow control meanwhile), then reads;
- a message that does not arrive within GRPC_RECEIVE_TIMEOUT_S ends the call and frees its
  bytes (a client that sends most of a message and goes quiet holds nothing for long);
- a gzip or deflate message is inflated here, bounded by GRPC_MAX_MESSAGE_BYTES and by
  MAX_INFLATION_RATIO before it is inflated, as a compressed REST body is."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.message import DecodeError

from app.errors import BadRequest, RequestTimeout
from app.grpc_api.v2 import grpc_service_pb2 as pb
from app.inference.budgets import Reservation
from app.protocol.encoding import decode_content, inflated_size_limit

# Messages past this size (or compressed) are inflated and parsed off the event loop.
PARSE_ON_LOOP_BYTES = 256 * 1024
# Bytes a call holds per byte of its message: the serialized message and the parsed one
# (the call keeps its reservation until it is answered).
HELD_PER_BYTE = 2
# The other calls' messages are a few names and flags: inflated up to this, at any ratio.
SMALL_MESSAGE_BYTES = 1024 * 1024


def compression_of(raw: bytes) -> str | None:
    """gzip or deflate (zlib), told by the first bytes: no message of this service starts
    with them, since a protobuf message starts with a field tag of fields 1 to 7."""
    if raw[:2] == b"\x1f\x8b":
        return "gzip"
    if len(raw) >= 2 and raw[0] == 0x78 and (raw[0] << 8 | raw[1]) % 31 == 0:
        return "deflate"
    return None


async def receive_infer_request(
    context: grpc.aio.ServicerContext,
    reservation: Reservation,
    max_bytes: int,
    max_inflation_ratio: float,
    timeout_s: float,
) -> pb.ModelInferRequest:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # Until it is read, a message may be as large as the limit: hold room for that (twice:
    # the serialized message and the parsed one live together), then for what it is.
    await reservation.grow_waiting(HELD_PER_BYTE * max_bytes, timeout_s)
    try:
        raw = await asyncio.wait_for(context.read(), max(deadline - loop.time(), 1e-3))
    except TimeoutError:
        raise RequestTimeout(
            f"the request message did not arrive within {timeout_s:g} s (GRPC_RECEIVE_TIMEOUT_S)"
        ) from None
    if raw is grpc.aio.EOF or not isinstance(raw, bytes):
        raise BadRequest("the call carried no request message")
    encoding = compression_of(raw)
    if encoding is None:
        reservation.shrink(reservation.held - HELD_PER_BYTE * len(raw))
    else:
        # The compressed bytes, and the most they may inflate to, serialized and parsed.
        inflated_bound = inflated_size_limit(len(raw), max_bytes, max_inflation_ratio)
        reservation.shrink(reservation.held - len(raw))
        reservation.grow(HELD_PER_BYTE * inflated_bound)

    def parse() -> pb.ModelInferRequest:
        serialized = decode_content(raw, encoding, max_bytes, max_inflation_ratio) if encoding else raw
        try:
            return pb.ModelInferRequest.FromString(serialized)
        except DecodeError:
            raise BadRequest("the request message is not a valid ModelInferRequest") from None

    if encoding is None and len(raw) <= PARSE_ON_LOOP_BYTES:
        return parse()
    return await asyncio.to_thread(parse)


def inflating_deserializer(message_class):
    """FromString for the small messages of the other calls, compressed or not."""

    def deserialize(raw: bytes):
        encoding = compression_of(raw)
        if encoding is not None:
            raw = decode_content(raw, encoding, SMALL_MESSAGE_BYTES)
        return message_class.FromString(raw)

    return deserialize
