"""V2 gRPC conformance with the real clients: tritonclient.grpc (sync and aio) and the kserve
SDK's InferenceGRPCClient. Every embedding is compared with the REST answer for the same
images; errors carry the REST messages under the V2 gRPC status codes."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.support import (
    data_uri,
    embeddings_of,
    encode,
    free_port,
    image_request,
    kserve_calls,
    photo,
    run_server,
    server_settings,
    static_server,
)

MODEL = "dinov2-small"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc-photos")
    files = {
        "chelsea.jpg": encode(photo("chelsea")),
        "coffee.png": encode(photo("coffee"), "PNG"),
        "astronaut.webp": encode(photo("astronaut").resize((128, 128)), "WEBP"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, list(files.values())


@pytest.fixture(scope="module")
def image_url(photos):
    with static_server(photos[0]) as url:
        yield f"{url}/chelsea.jpg"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    settings = server_settings(
        tiny_models["dinov2"], tmp_path_factory.mktemp("srv"), model_name=MODEL, grpc_port=free_port()
    )
    with run_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def rest(server, photos):
    """The reference: the images as data URIs in a plain JSON REST request."""
    response = httpx.post(
        server.infer_url(), json=image_request([data_uri(f) for f in photos[1]]), timeout=60
    )
    assert response.status_code == 200
    return embeddings_of(response), response.json()["outputs"][0]["data"][0]


def _bytes_input(elements, module=triton, name="image"):
    tensor = module.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_))
    return tensor


def _document(result) -> tuple[str, np.ndarray]:
    [document] = result.as_numpy("output")
    return document.decode(), np.asarray(json.loads(document)["embeddings"], np.float32)


def test_tritonclient_sync_every_call(server, photos, rest, image_url):
    expected, rest_document = rest
    files = photos[1]
    client = triton.InferenceServerClient(server.grpc_target)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        metadata = client.get_server_metadata(as_json=True)
        assert metadata["name"] == "image-embed-server"
        assert set(metadata["extensions"]) >= {"statistics", "model_repository"}
        rest_metadata = httpx.get(f"{server.url}/v2/models/{MODEL}").json()
        model = client.get_model_metadata(MODEL, as_json=True)
        assert (model["name"], model["platform"], model["versions"]) == (
            MODEL,
            rest_metadata["platform"],
            ["1"],
        )
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in model["inputs"]] == [
            (t["name"], t["datatype"], t["shape"]) for t in rest_metadata["inputs"]
        ]
        assert [(t["name"], [int(d) for d in t["shape"]]) for t in model["outputs"]] == [
            (t["name"], t["shape"]) for t in rest_metadata["outputs"]
        ]

        # The files' own bytes as BYTES (raw_input_contents), both outputs asked for.
        outputs = [triton.InferRequestedOutput("output"), triton.InferRequestedOutput("raw_embeddings")]
        result = client.infer(MODEL, [_bytes_input(files)], outputs=outputs, request_id="g-1")
        document, from_document = _document(result)
        assert document == rest_document  # the same string, byte for byte
        np.testing.assert_array_equal(from_document, expected)
        np.testing.assert_array_equal(result.as_numpy("raw_embeddings"), expected)
        assert result.get_response().id == "g-1"

        # Flags as inputs, as on REST: include_raw, pooling, normalisation.
        flags = [
            _bytes_input([b"mean"], name="pooling_strategy"),
            _bytes_input([b"true"], name="normalize"),
            _bytes_input([b"true"], name="include_raw"),
        ]
        result = client.infer(MODEL, [_bytes_input(files[:1]), *flags])
        rest_mean = embeddings_of(
            httpx.post(
                server.infer_url(),
                json=image_request([data_uri(files[0])], pooling_strategy="mean", normalize="true"),
            )
        )
        np.testing.assert_allclose(result.as_numpy("raw_embeddings"), rest_mean, rtol=0, atol=0)

        # A URL, fetched under the same policy as REST.
        by_url = client.infer(MODEL, [_bytes_input([image_url.encode()])])
        rest_url = embeddings_of(httpx.post(server.infer_url(), json=image_request([image_url])))
        np.testing.assert_array_equal(_document(by_url)[1], rest_url)

        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        rest_stats = httpx.get(f"{server.url}/v2/models/{MODEL}/stats").json()["model_stats"][0]
        assert int(stats["inference_count"]) == rest_stats["inference_count"] >= 1
        assert (
            int(stats["inference_stats"]["success"]["count"])
            == rest_stats["inference_stats"]["success"]["count"]
            >= 5
        )
        assert (
            int(stats["inference_stats"]["cache_hit"]["count"])
            == rest_stats["inference_stats"]["cache_hit"]["count"]
        )
        index = client.get_model_repository_index(as_json=True)["models"]
        assert index == [{"name": MODEL, "version": "1", "state": "READY"}]  # empty reason is omitted

        # Errors: the REST message, under the V2 gRPC code.
        cases = [
            ("missing", [_bytes_input(files[:1])], "StatusCode.NOT_FOUND", "unknown model 'missing'"),
            (MODEL, [_bytes_input([b"@@"])], "StatusCode.INVALID_ARGUMENT", "input 'image' element 0"),
            (
                MODEL,
                [_bytes_input(files[:1], name="nope")],
                "StatusCode.INVALID_ARGUMENT",
                "unknown input 'nope'",
            ),
            (MODEL, [_bytes_input([b"x"] * 65)], "StatusCode.RESOURCE_EXHAUSTED", "over the limit of 64"),
        ]
        for model_name, inputs, code, message in cases:
            with pytest.raises(InferenceServerException) as caught:
                client.infer(model_name, inputs)
            assert caught.value.status() == code and message in caught.value.message()
            rest_error = httpx.post(
                server.infer_url(model_name),
                json={
                    "inputs": [
                        {
                            "name": i.name(),
                            "shape": list(i.shape()),
                            "datatype": "BYTES",
                            "data": ["@@"] * i.shape()[0],
                        }
                        for i in inputs
                    ]
                },
            ).json()["error"]
            if code != "StatusCode.INVALID_ARGUMENT" or "unknown input" in message:
                assert caught.value.message() == rest_error
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.get_model_metadata("missing")
    finally:
        client.close()


def test_tritonclient_aio(server, photos, rest):
    expected, _ = rest

    async def go():
        client = triton_aio.InferenceServerClient(server.grpc_target)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready(MODEL)
            assert (await client.get_model_metadata(MODEL, as_json=True))["name"] == MODEL
            results = await asyncio.gather(
                *(client.infer(MODEL, [_bytes_input([f], triton_aio)]) for f in photos[1])
            )
            np.testing.assert_array_equal(np.concatenate([_document(r)[1] for r in results]), expected)
            metadata = await client.get_server_metadata(as_json=True)
            assert metadata == (await asyncio.to_thread(httpx.get, f"{server.url}/v2")).json()
            stats = await client.get_inference_statistics(MODEL, as_json=True)
            assert int(stats["model_stats"][0]["inference_count"]) >= 3
            assert (await client.get_model_repository_index(as_json=True))["models"][0]["state"] == "READY"
            with pytest.raises(InferenceServerException) as caught:
                await client.infer("missing", [_bytes_input(photos[1][:1], triton_aio)])
            assert caught.value.status() == "StatusCode.NOT_FOUND"
            rest_error = await asyncio.to_thread(httpx.get, f"{server.url}/v2/models/missing")
            assert caught.value.message() == rest_error.json()["error"]
        finally:
            await client.close()

    asyncio.run(go())


def test_kserve_sdk_grpc_client(server, photos, rest, image_url):
    expected, rest_document = rest
    folder, _ = photos
    names = ["chelsea.jpg", "coffee.png", "astronaut.webp"]
    calls = kserve_calls(
        "grpc", server.grpc_target, MODEL, *(str(folder / n) for n in names), "--url", image_url
    )
    assert calls["live"] and calls["ready"] and calls["model_ready"] and calls["id"] == "kg-1"
    np.testing.assert_array_equal(np.asarray(calls["raw_embeddings"], np.float32), expected)
    assert calls["document"] == rest_document
    rest_url = embeddings_of(httpx.post(server.infer_url(), json=image_request([image_url])))
    np.testing.assert_array_equal(
        np.asarray(json.loads(calls["url_document"])["embeddings"], np.float32), rest_url
    )
    assert calls["errors"]["unknown_model"][0] == "NOT_FOUND"
    assert (
        calls["errors"]["bad_image"][0] == "INVALID_ARGUMENT"
        and "element 0" in calls["errors"]["bad_image"][1]
    )


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_text_over_grpc_equals_text_over_rest(text_models, tmp_path, family):
    settings = server_settings(text_models[family], tmp_path, model_name="search", grpc_port=free_port())
    texts = ["a photo of a cat", "coins", "a photo of the cat " * 15]
    with run_server(settings) as server:
        rest = httpx.post(
            server.infer_url(),
            json={
                "inputs": [
                    {"name": "text", "shape": [3], "datatype": "BYTES", "data": texts},
                    {"name": "include_raw", "shape": [1], "datatype": "BYTES", "data": ["true"]},
                ]
            },
            timeout=60,
        )
        client = triton.InferenceServerClient(server.grpc_target)
        try:
            text = _bytes_input([t.encode() for t in texts], name="text")
            result = client.infer("search", [text], outputs=[triton.InferRequestedOutput("raw_embeddings")])
        finally:
            client.close()
    np.testing.assert_array_equal(result.as_numpy("raw_embeddings"), embeddings_of(rest))
    parameters = result.get_response().parameters
    assert parameters["texts_truncated"].int64_param == 1
