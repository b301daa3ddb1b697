"""Conformance with the real V2 clients people use: tritonclient (sync and aio) and the kserve
SDK. Every embedding is checked against the same image sent as plain JSON."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.support import (
    data_uri,
    embeddings_of,
    encode,
    image_request,
    kserve_calls,
    photo,
    run_server,
    server_settings,
)

MODEL = "dinov2-small"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    settings = server_settings(tiny_models["dinov2"], tmp_path_factory.mktemp("srv"), model_name=MODEL)
    with run_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def files():
    return [
        encode(photo("chelsea")),
        encode(photo("coffee"), "PNG"),
        encode(photo("astronaut").resize((128, 128)), "WEBP"),
    ]


@pytest.fixture(scope="module")
def plain_json(server, files):
    """The reference: each image as a data URI in a plain JSON request."""
    response = httpx.post(server.infer_url(), json=image_request([data_uri(f) for f in files]), timeout=60)
    assert response.status_code == 200
    return embeddings_of(response)


def _image_input(elements, binary: bool, module=triton):
    tensor = module.InferInput("image", [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def _flag_input(name, value, module=triton):
    tensor = module.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_), binary_data=False)
    return tensor


def _document_embeddings(result) -> np.ndarray:
    import json

    [document] = result.as_numpy("output")
    return np.asarray(json.loads(document)["embeddings"], np.float32)


def test_triton_health_and_metadata(server):
    client = triton.InferenceServerClient(server.host_port)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("missing")
    metadata = client.get_server_metadata()
    assert set(metadata["extensions"]) == {"binary_tensor_data", "statistics", "model_repository"}
    model = client.get_model_metadata(MODEL, "1")
    assert model["outputs"][1] == {"name": "raw_embeddings", "datatype": "FP32", "shape": [-1, 32]}
    client.close()


@pytest.mark.parametrize("binary_inputs", [True, False], ids=["binary-inputs", "json-inputs"])
def test_triton_infer_with_data_uris(server, files, plain_json, binary_inputs):
    client = triton.InferenceServerClient(server.host_port)
    inputs = [_image_input([data_uri(f).encode() for f in files], binary_inputs)]
    result = client.infer(MODEL, inputs)  # default: every output as binary data
    np.testing.assert_array_equal(_document_embeddings(result), plain_json)
    client.close()


def test_triton_infer_with_raw_file_bytes_and_urls(server, files, plain_json, tmp_path):
    from tests.support import static_server

    (tmp_path / "coffee.png").write_bytes(files[1])
    client = triton.InferenceServerClient(server.host_port)
    with static_server(tmp_path) as host:
        elements = [files[0], f"{host}/coffee.png".encode(), files[2]]  # file, URL, file
        outputs = [triton.InferRequestedOutput("raw_embeddings", binary_data=True)]
        result = client.infer(MODEL, [_image_input(elements, True)], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("raw_embeddings"), plain_json)
    assert result.get_output("output") is None  # only what was asked for
    client.close()


def test_triton_requested_outputs_json_and_binary(server, files, plain_json):
    client = triton.InferenceServerClient(server.host_port)
    outputs = [
        triton.InferRequestedOutput("raw_embeddings", binary_data=False),
        triton.InferRequestedOutput("output", binary_data=True),
    ]
    result = client.infer(MODEL, [_image_input(files, True)], outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("raw_embeddings"), plain_json, rtol=1e-6)
    np.testing.assert_array_equal(_document_embeddings(result), plain_json)
    assert "data" in result.get_output("raw_embeddings")
    client.close()


def test_triton_gzip_both_ways_and_flags(server, files, plain_json):
    client = triton.InferenceServerClient(server.host_port)
    inputs = [_image_input(files, True), _flag_input("normalize", "true")]
    result = client.infer(
        MODEL, inputs, request_compression_algorithm="gzip", response_compression_algorithm="gzip"
    )
    expected = plain_json / np.linalg.norm(plain_json, axis=1, keepdims=True)
    np.testing.assert_allclose(_document_embeddings(result), expected, rtol=1e-5, atol=1e-6)
    deflated = client.infer(MODEL, [_image_input(files, True)], request_compression_algorithm="deflate")
    np.testing.assert_array_equal(_document_embeddings(deflated), plain_json)
    client.close()


def test_triton_versioned_route_and_statistics(server, files, plain_json):
    client = triton.InferenceServerClient(server.host_port)
    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    # parameters.cache=false: a photo sent before is computed again, and counted.
    result = client.infer(
        MODEL, [_image_input(files[:1], True)], model_version="1", parameters={"cache": False}
    )
    np.testing.assert_array_equal(_document_embeddings(result), plain_json[:1])
    after = client.get_inference_statistics(MODEL, "1")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    client.close()


def test_triton_raises_with_the_server_message(server):
    client = triton.InferenceServerClient(server.host_port)
    with pytest.raises(InferenceServerException, match="pooling strategy 'median'"):
        client.infer(MODEL, [_image_input([b"x"], True), _flag_input("pooling_strategy", "median")])
    with pytest.raises(InferenceServerException, match="element 0"):
        client.infer(MODEL, [_image_input([b"\x89PNG\r\n\x1a\n broken"], True)])
    client.close()


def test_triton_aio_client(server, files, plain_json):
    async def go():
        client = triton_aio.InferenceServerClient(server.host_port)
        try:
            assert await client.is_server_ready() and await client.is_model_ready(MODEL)
            inputs = [_image_input(files, True, triton_aio)]
            result = await client.infer(MODEL, inputs, request_compression_algorithm="gzip")
            np.testing.assert_array_equal(_document_embeddings(result), plain_json)
            json_inputs = [_image_input([data_uri(f).encode() for f in files], False, triton_aio)]
            outputs = [triton_aio.InferRequestedOutput("raw_embeddings", binary_data=True)]
            raw = await client.infer(MODEL, json_inputs, outputs=outputs)
            np.testing.assert_array_equal(raw.as_numpy("raw_embeddings"), plain_json)
            with pytest.raises(InferenceServerException, match="unknown model"):
                await client.infer("missing", inputs)
        finally:
            await client.close()

    asyncio.run(go())


def test_kserve_sdk(server, files, plain_json, tmp_path):
    paths = []
    for index, data in enumerate(files):
        paths.append(tmp_path / f"image-{index}")
        paths[-1].write_bytes(data)
    calls = kserve_calls("rest", server.url, MODEL, *map(str, paths))
    assert calls["live"] and calls["ready"] and calls["model_ready"] and calls["id"] == "k-1"
    np.testing.assert_array_equal(np.asarray(calls["raw_embeddings"], np.float32), plain_json)
    np.testing.assert_array_equal(
        np.asarray(json.loads(calls["document"])["embeddings"], np.float32), plain_json
    )
    assert calls["error"][0] == 400 and "element 0" in calls["error"][1]
