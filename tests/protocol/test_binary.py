"""The binary tensor data extension and body parsing."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from app.errors import BadRequest, PayloadTooLarge
from app.protocol.binary import decode_tensor, encode_bytes_elements
from app.protocol.encoding import decode_content
from app.protocol.request import parse_infer_body


def test_bytes_elements_round_trip():
    elements = [b"", b"abc", bytes(range(256))]
    assert decode_tensor("BYTES", encode_bytes_elements(elements), "t") == elements


def test_numeric_and_bool_tensors():
    assert decode_tensor("FP32", np.array([1.5, -2], "<f4").tobytes(), "t") == [1.5, -2.0]
    assert decode_tensor("BOOL", b"\x00\x01", "t") == [False, True]
    with pytest.raises(BadRequest, match="whole number"):
        decode_tensor("FP32", b"\x00" * 6, "t")


@pytest.mark.parametrize("raw", [b"\x05\x00", b"\x05\x00\x00\x00abc"])
def test_truncated_bytes_elements_are_refused(raw):
    with pytest.raises(BadRequest, match="truncated|runs past"):
        decode_tensor("BYTES", raw, "input 'image'")


def test_mixed_json_and_binary_inputs():
    chunk = encode_bytes_elements([b"\xff\xd8\xffjpeg", b"https://127.0.0.1/a.jpg"])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(chunk)},
                },
                {"name": "normalize", "shape": [1], "datatype": "BYTES", "data": ["true"]},
            ]
        }
    ).encode()
    parsed = parse_infer_body(header + chunk, str(len(header)))
    assert parsed.tensors["image"].values == [b"\xff\xd8\xffjpeg", b"https://127.0.0.1/a.jpg"]
    assert parsed.tensors["normalize"].values == ["true"]
    with pytest.raises(BadRequest, match="beyond those the inputs declare"):
        parse_infer_body(header + chunk + b"extra", str(len(header)))


def test_raw_body_is_one_image():
    parsed = parse_infer_body(b"\x89PNG...", "0")
    assert parsed.tensors["image"].values == [b"\x89PNG..."]


def test_nested_json_data_is_flattened():
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]}
    )
    assert parse_infer_body(body.encode(), None).tensors["x"].values == [1, 2, 3, 4]


def test_gzip_and_deflate_bodies_and_their_limit():
    body = b'{"inputs": []}' * 10
    assert decode_content(gzip.compress(body), "gzip", 10_000) == body
    assert decode_content(zlib.compress(body), "deflate", 10_000) == body
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_content(raw_deflate.compress(body) + raw_deflate.flush(), "deflate", 10_000) == body
    with pytest.raises(PayloadTooLarge):
        decode_content(gzip.compress(b"\x00" * 100_000), "gzip", 10_000)
    with pytest.raises(BadRequest, match="not valid gzip"):
        decode_content(b"not gzip", "gzip", 10_000)
