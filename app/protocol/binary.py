"""Binary tensor data extension (Triton `extension_binary_data.md`): tensors as raw bytes.

A body is a JSON header of `Inference-Header-Content-Length` bytes followed by each binary
tensor in order; BYTES elements are a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from app.errors import BadRequest

# V2 datatype -> little-endian numpy dtype (BYTES and BOOL handled apart).
NUMPY_DTYPES = {
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}

_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Split a request body into its JSON header and the binary part that follows it."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
    if length < 0 or length > len(body):
        raise BadRequest(f"Inference-Header-Content-Length {length} is outside the body of {len(body)} bytes")
    return body[:length], body[length:]


def decode_bytes_elements(raw: bytes, what: str, max_elements: int | None = None) -> list[bytes]:
    """Decode a BYTES tensor: repeated (uint32 little-endian length, bytes); past
    `max_elements` it stops (the caller reports the wrong count, nothing more is copied)."""
    elements: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if max_elements is not None and len(elements) > max_elements:
            break
        if offset + 4 > len(raw):
            raise BadRequest(f"{what}: truncated BYTES element length at offset {offset}")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest(
                f"{what}: BYTES element of {size} bytes at offset {offset} runs past the "
                f"{len(raw)} bytes sent"
            )
        elements.append(bytes(view[offset : offset + size]))
        offset += size
    return elements


def decode_tensor(datatype: str, raw: bytes, what: str, max_elements: int | None = None) -> list:
    """Binary tensor data -> flat list of Python values. With `max_elements`, a fixed-size
    tensor of another count is refused before any value becomes a Python object, and a
    BYTES tensor stops one element past it (the caller then reports the count)."""
    if datatype == "BYTES":
        return decode_bytes_elements(raw, what, max_elements)
    if datatype == "BOOL":
        _check_count(len(raw), max_elements, what)
        return [b != 0 for b in raw]
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"{what}: datatype {datatype} cannot be sent as binary data")
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise BadRequest(f"{what}: {len(raw)} bytes is not a whole number of {datatype} values")
    _check_count(len(raw) // itemsize, max_elements, what)
    return np.frombuffer(raw, dtype=dtype).tolist()


def _check_count(count: int, expected: int | None, what: str) -> None:
    if expected is not None and count != expected:
        raise BadRequest(f"{what}: its shape needs {expected} elements, the binary data holds {count}")


def encode_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)
