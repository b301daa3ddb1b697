"""Infer through the real app over HTTP with a tiny DINOv2: the original service's payloads,
response format, raw output, flags and ids."""

from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest

from tests.support import data_uri, embeddings_of, image_request


def post(server, payload, **kwargs) -> httpx.Response:
    return httpx.post(server.infer_url(), json=payload, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def chelsea_bytes(photo_files):
    return (photo_files / "chelsea.jpg").read_bytes()


def test_readme_single_url_payload(dinov2_server, image_host, chelsea_bytes):
    payload = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [f"{image_host}/chelsea.jpg?download=true"],
            },
            {"name": "pooling_strategy", "shape": [1], "datatype": "BYTES", "data": ["mean"]},
        ]
    }
    response = post(dinov2_server, payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "dinov2-large"
    uuid.UUID(body["id"])  # generated when the request has none
    [output] = body["outputs"]
    assert (output["name"], output["shape"], output["datatype"]) == ("output", [1], "BYTES")
    text = output["data"][0]
    # The original service's string: these keys, in this order, with json.dumps spacing.
    assert text.startswith('{"embedding_dim": 32, "embeddings": [[')
    document = json.loads(text)
    assert list(document) == ["embedding_dim", "embeddings", "model_id", "shape"]
    assert document["shape"] == [1, 32] and document["model_id"] == dinov2_server.settings.model_id
    # The same bytes inline give the same embedding.
    inline = post(dinov2_server, image_request([data_uri(chelsea_bytes)], pooling_strategy="mean"))
    np.testing.assert_array_equal(embeddings_of(inline), np.asarray(document["embeddings"], np.float32))


def test_readme_base64_payload(dinov2_server, chelsea_bytes):
    response = post(dinov2_server, image_request([data_uri(chelsea_bytes)]))
    assert response.status_code == 200, response.text
    assert embeddings_of(response).shape == (1, 32)


def test_bare_base64_equals_data_uri(dinov2_server, chelsea_bytes):
    import base64

    bare = post(dinov2_server, image_request([base64.b64encode(chelsea_bytes).decode()]))
    uri = post(dinov2_server, image_request([data_uri(chelsea_bytes)]))
    np.testing.assert_array_equal(embeddings_of(bare), embeddings_of(uri))


def test_readme_batch_payload_with_raw_output(dinov2_server, image_host):
    urls = [f"{image_host}/chelsea.jpg", f"{image_host}/coffee.jpg"]
    response = post(dinov2_server, image_request(urls, include_raw="true") | {"id": "batch-1"})
    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    assert header["id"] == "batch-1"
    output, raw = header["outputs"]
    assert raw["name"] == "raw_embeddings" and raw["datatype"] == "FP32" and raw["shape"] == [2, 32]
    size = raw["parameters"]["binary_data_size"]
    assert size == 2 * 32 * 4 == len(response.content) - header_length
    decoded = np.frombuffer(response.content[header_length:], dtype="<f4").reshape(2, 32)
    from_json = np.asarray(json.loads(output["data"][0])["embeddings"], np.float32)
    np.testing.assert_array_equal(decoded, from_json)
    assert not np.allclose(decoded[0], decoded[1])


def test_normalize_flag_and_pooling_choice(dinov2_server, chelsea_bytes):
    image = [data_uri(chelsea_bytes)]
    plain = embeddings_of(post(dinov2_server, image_request(image)))
    normed = embeddings_of(post(dinov2_server, image_request(image, normalize="true")))
    assert abs(np.linalg.norm(plain) - 1) > 1e-3
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(normed, plain / np.linalg.norm(plain), rtol=1e-5, atol=1e-6)
    as_bool = {"name": "normalize", "shape": [1], "datatype": "BOOL", "data": [True]}
    payload = image_request(image)
    payload["inputs"].append(as_bool)
    np.testing.assert_array_equal(embeddings_of(post(dinov2_server, payload)), normed)
    cls, mean, mx = (
        embeddings_of(post(dinov2_server, image_request(image, pooling_strategy=p)))
        for p in ("cls", "mean", "max")
    )
    assert np.array_equal(cls, plain)  # DINOv2's natural default is cls
    assert not np.allclose(cls, mean) and not np.allclose(mean, mx)


def test_versioned_route_and_client_extra_fields(dinov2_server, chelsea_bytes):
    url = f"{dinov2_server.url}/v2/models/dinov2-large/versions/1/infer"
    payload = image_request([data_uri(chelsea_bytes)]) | {
        "model_name": "dinov2-large",  # the kserve SDK adds this
        "parameters": {"binary_data_output": False, "timeout": 30_000_000, "headers": {}},
    }
    response = httpx.post(url, json=payload, timeout=60)
    assert response.status_code == 200, response.text
    assert embeddings_of(response).shape == (1, 32)


def test_body_without_content_type_is_read(dinov2_server, chelsea_bytes):
    body = json.dumps(image_request([data_uri(chelsea_bytes)])).encode()
    response = httpx.post(dinov2_server.infer_url(), content=body, headers={"content-type": ""}, timeout=60)
    assert response.status_code == 200, response.text


def test_images_of_one_request_share_forward_passes(dinov2_server, chelsea_bytes):
    stats_url = f"{dinov2_server.url}/v2/models/dinov2-large/stats"
    before = httpx.get(stats_url).json()["model_stats"][0]
    # The cache off: five copies of one photo would be one forward and four waits on it.
    body = image_request([data_uri(chelsea_bytes)] * 5) | {"parameters": {"cache": False}}
    response = post(dinov2_server, body)
    assert response.status_code == 200
    after = httpx.get(stats_url).json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 5
    assert after["execution_count"] - before["execution_count"] == 1


def test_raw_body_request_is_one_image(dinov2_server, chelsea_bytes):
    response = httpx.post(
        dinov2_server.infer_url(), content=chelsea_bytes, headers={"Inference-Header-Content-Length": "0"}
    )
    assert response.status_code == 200, response.text
    as_json = post(dinov2_server, image_request([data_uri(chelsea_bytes)]))
    np.testing.assert_array_equal(embeddings_of(response), embeddings_of(as_json))


def test_parameters_timeout_bounds_the_request(dinov2_server, chelsea_bytes):
    import time

    from tests.support import slow_server

    with slow_server(3.0, chelsea_bytes) as host:
        payload = image_request([f"{host}/cat.jpg"]) | {"parameters": {"timeout": 300_000}}  # 0.3 s
        started = time.monotonic()
        response = post(dinov2_server, payload)
        elapsed = time.monotonic() - started
    assert response.status_code == 504 and "300 ms" in response.json()["error"]
    assert elapsed < 2.0
    assert post(dinov2_server, image_request([data_uri(chelsea_bytes)])).status_code == 200


def test_openai_text_to_an_image_only_model_names_the_missing_text_tower(dinov2_server, chelsea_bytes):
    url = f"{dinov2_server.url}/v1/embeddings"
    for text in ("hello", ["dogs", "a photo of a cat"]):  # "dogs" is valid base64, not an image
        answer = httpx.post(url, json={"model": "dinov2-large", "input": text}, timeout=60)
        assert answer.status_code == 400, answer.text
        assert (
            "has no text tower: text embeddings need a full CLIP, MetaCLIP 2 or SigLIP model"
            in answer.json()["error"]["message"]
        )
    # An image source is still embedded without saying modality=image.
    answer = httpx.post(url, json={"model": "dinov2-large", "input": data_uri(chelsea_bytes)}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 1
