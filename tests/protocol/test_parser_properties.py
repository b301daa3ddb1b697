"""Property tests: whatever bytes arrive, the request parser and the binary decoder either
decode them or refuse them with a 4xx ServiceError: never another exception."""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ServiceError
from app.protocol.binary import decode_tensor
from app.protocol.encoding import decode_content
from app.protocol.request import parse_infer_body
from app.protocol.schema import DATATYPES
from app.protocol.spec import SizeLimits, build_spec

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
input_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(
            st.sampled_from(["image", "normalize", "pooling_strategy", "include_raw"]), json_values
        ),
        "shape": st.one_of(st.lists(st.integers(-3, 5), max_size=3), json_values),
        "datatype": st.one_of(st.sampled_from(DATATYPES), json_values),
        "data": json_values,
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.integers(-5, 50)}), json_values
        ),
    },
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.one_of(st.lists(input_like, max_size=4), json_values),
        "outputs": st.one_of(
            st.lists(st.fixed_dictionaries({"name": json_values, "parameters": json_values}), max_size=3),
            json_values,
        ),
        "parameters": json_values,
    },
)


def _parse(body: bytes, header_length: str | None) -> None:
    try:
        build_spec(
            parse_infer_body(body, header_length), SizeLimits(max_images=16, max_texts=16, max_text_chars=64)
        )
    except ServiceError as exc:
        assert 400 <= exc.status_code < 500, exc


@SETTINGS
@given(
    body=st.binary(max_size=512),
    header_length=st.one_of(st.none(), st.just("0"), st.integers(-5, 600).map(str), st.text(max_size=5)),
)
def test_any_bytes_are_parsed_or_refused(body, header_length):
    _parse(body, header_length)


@SETTINGS
@given(document=request_like, tail=st.binary(max_size=64), declare=st.booleans())
def test_any_json_shaped_request_is_parsed_or_refused(document, tail, declare):
    header = json.dumps(document).encode()
    _parse(header + tail, str(len(header)) if declare else None)


@SETTINGS
@given(datatype=st.sampled_from(DATATYPES), raw=st.binary(max_size=256))
def test_binary_decoder_decodes_or_refuses(datatype, raw):
    try:
        decode_tensor(datatype, raw, "input 'x'")
    except ServiceError as exc:
        assert exc.status_code == 400


@SETTINGS
@given(elements=st.lists(st.binary(max_size=40), max_size=6), cut=st.integers(0, 400))
def test_bytes_tensors_round_trip_or_refuse_when_cut(elements, cut):
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    assert decode_tensor("BYTES", raw, "x") == elements
    try:
        decode_tensor("BYTES", raw[:cut], "x")
    except ServiceError as exc:
        assert exc.status_code == 400


@SETTINGS
@given(
    body=st.binary(max_size=256),
    encoding=st.sampled_from(["gzip", "deflate", "identity", "x-gzip", "br", ""]),
)
def test_content_decoding_decodes_or_refuses(body, encoding):
    try:
        decode_content(body, encoding, 10_000)
    except ServiceError as exc:
        assert 400 <= exc.status_code < 500
