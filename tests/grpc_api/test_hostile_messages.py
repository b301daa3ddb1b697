"""Hostile V2 gRPC messages: each answered with the right status code and a message that
names the problem, and the server still serving the next call."""

from __future__ import annotations

import struct

import grpc
import pytest

from app.grpc_api.v2 import grpc_service_pb2 as pb
from app.grpc_api.v2.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.support import encode, free_port, photo, run_server, server_settings

MODEL = "tiny"
MAX_MESSAGE = 256 * 1024
JPEG = encode(photo("coffee").resize((64, 48)))


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@pytest.fixture(scope="module")
def stub(tiny_models, tmp_path_factory):
    settings = server_settings(
        tiny_models["dinov2"],
        tmp_path_factory.mktemp("srv"),
        model_name=MODEL,
        grpc_port=free_port(),
        grpc_max_message_bytes=MAX_MESSAGE,
    )
    with run_server(settings) as server:
        with grpc.insecure_channel(
            server.grpc_target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        ) as channel:
            yield GRPCInferenceServiceStub(channel)


def request(*inputs, raw: list[bytes] | None = None, **fields) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=MODEL, **fields)
    for item in inputs:
        message.inputs.append(item)
    if raw is not None:
        message.raw_input_contents.extend(raw)
    return message


def tensor(name="image", datatype="BYTES", shape=(1,), **contents) -> pb.ModelInferRequest.InferInputTensor:
    item = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    for field, values in contents.items():
        getattr(item.contents, field).extend(values)
    return item


HOSTILE = {
    "oversized message": (
        request(tensor(), raw=[length_prefixed(b"\0" * (MAX_MESSAGE + 10))]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    "image as FP32": (
        request(tensor(datatype="FP32", fp32_contents=[1.0])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image' must have datatype BYTES, got FP32",
    ),
    "contents in the wrong field": (
        request(tensor(int_contents=[1])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype BYTES takes bytes_contents, not int_contents",
    ),
    "unknown datatype": (
        request(tensor(datatype="COMPLEX", bytes_contents=[JPEG])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown datatype 'COMPLEX'",
    ),
    "shape larger than the data": (
        request(tensor(shape=(3,), bytes_contents=[JPEG, JPEG])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [3] needs 3 elements, got 2",
    ),
    "negative dimension": (
        request(tensor(shape=(-1,), bytes_contents=[JPEG])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "negative dimension",
    ),
    "4 million flag elements": (
        request(
            tensor(),
            tensor(name="normalize", datatype="INT8", shape=(4_000_000,)),
            raw=[length_prefixed(JPEG), b""],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'normalize' must have exactly one element",
    ),
    "too many images": (
        request(tensor(shape=(65,), bytes_contents=[JPEG] * 65)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "input 'image' has 65 images, over the limit of 64 per request (MAX_IMAGES_PER_REQUEST)",
    ),
    "raw BYTES length past the end": (
        request(tensor(), raw=[struct.pack("<I", 1_000_000) + JPEG]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "runs past the",
    ),
    "truncated raw length prefix": (
        request(tensor(), raw=[b"\x01\x00"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "truncated BYTES element length",
    ),
    "raw FP32 not a whole number of values": (
        request(tensor(), tensor(name="normalize", datatype="FP32"), raw=[length_prefixed(JPEG), b"\0" * 3]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "3 bytes is not a whole number of FP32 values",
    ),
    "fewer raw entries than inputs": (
        request(tensor(), tensor(name="normalize"), raw=[length_prefixed(JPEG)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents has 1 entries for 2 inputs",
    ),
    "raw and contents together": (
        request(tensor(bytes_contents=[JPEG]), raw=[length_prefixed(JPEG)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has both contents and raw_input_contents",
    ),
    "the same input twice": (
        request(tensor(bytes_contents=[JPEG]), tensor(bytes_contents=[JPEG])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "appears more than once",
    ),
    "no inputs": (request(), grpc.StatusCode.INVALID_ARGUMENT, "inputs: List should have at least 1 item"),
    "not an image": (
        request(tensor(bytes_contents=[b"GIF89a" + b"\xff" * 64])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image' element 0",
    ),
    "timeout parameter not a number": (
        request(
            tensor(bytes_contents=[JPEG]), parameters={"timeout": pb.InferParameter(string_param="soon")}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameter timeout must be a positive number",
    ),
    "unknown version": (
        request(tensor(bytes_contents=[JPEG]), model_version="7"),
        grpc.StatusCode.NOT_FOUND,
        "has no version '7'",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_message_gets_its_status_and_the_server_serves_on(stub, case):
    message, code, text = HOSTILE[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(message, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    assert text in caught.value.details()
    good = stub.ModelInfer(request(tensor(bytes_contents=[JPEG])), timeout=30)
    assert [o.name for o in good.outputs] == ["output"] and len(good.raw_output_contents) == 1


def test_deadline_is_the_request_timeout(stub):
    # 1 ms cannot decode and embed 8 images: DEADLINE_EXCEEDED, then serving on. The cache
    # off: answered from it (the photo is sent before), 8 copies can take under a millisecond.
    uncached = request(tensor(bytes_contents=[JPEG] * 8, shape=(8,)))
    uncached.parameters["cache"].bool_param = False
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(uncached, timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelInfer(request(tensor(bytes_contents=[JPEG])), timeout=30).outputs[0].name == "output"
