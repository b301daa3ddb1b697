"""Bad requests: each a 4xx `{"error": ...}` naming the problem, and the server answers the
next good request normally."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.support import data_uri, embeddings_of, encode, image_request, photo, run_server, server_settings

GOOD_JPEG = encode(photo("astronaut").resize((64, 64)))
TRUNCATED_JPEG = encode(photo("coffee"))[:2000]


def _json(payload) -> bytes:
    return json.dumps(payload).encode()


def _image(element, **extra) -> bytes:
    return _json(image_request([element], **extra))


def _bad_cases(image_host):
    """(case id, body bytes, headers, expected status, words the message must contain)"""
    return [
        ("malformed json", b'{"inputs": [', {}, 400, ["not valid JSON"]),
        ("json array", b"[1, 2]", {}, 400, ["JSON object"]),
        ("no inputs", _json({"inputs": []}), {}, 400, ["inputs"]),
        ("input without shape", _json({"inputs": [{"name": "image", "datatype": "BYTES", "data": ["x"]}]}), {}, 400, ["shape"]),
        ("missing image", _json({"inputs": [{"name": "normalize", "shape": [1], "datatype": "BYTES", "data": ["true"]}]}), {}, 400, ["missing input 'image'"]),
        ("image as FP32", _json({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}), {}, 400, ["BYTES"]),
        ("unknown datatype", _json({"inputs": [{"name": "image", "shape": [1], "datatype": "STRING", "data": ["x"]}]}), {}, 400, ["unknown datatype"]),
        ("shape mismatch", _json({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [data_uri(GOOD_JPEG)]}]}), {}, 400, ["shape [2] needs 2 elements, got 1"]),
        ("number in BYTES data", _json({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [7]}]}), {}, 400, ["element 0", "strings"]),
        ("broken base64", _image("@@@not-base64@@@"), {}, 400, ["element 0", "base64"]),
        ("base64 of text", _image(base64.b64encode(b"hello, world").decode()), {}, 400, ["element 0", "not a recognised image"]),
        ("data uri of text", _image("data:text/plain;base64,aGVsbG8="), {}, 400, ["element 0", "text/plain"]),
        ("truncated jpeg", _image(data_uri(TRUNCATED_JPEG)), {}, 400, ["element 0", "truncated"]),
        ("second element bad", _json(image_request([data_uri(GOOD_JPEG), "data:image/png;base64,AAAA"])), {}, 400, ["element 1"]),
        ("ftp url", _image("ftp://127.0.0.1/a.jpg"), {}, 400, ["scheme", "ftp"]),
        ("url 404", _image(f"{image_host}/missing.jpg"), {}, 400, ["element 0", "HTTP 404"]),
        ("url not an image", _image(f"{image_host}/notes.txt"), {}, 400, ["element 0", "text/plain"]),
        ("unknown pooling", _image(data_uri(GOOD_JPEG), pooling_strategy="median"), {}, 400, ["pooling", "median"]),
        ("bad flag", _image(data_uri(GOOD_JPEG), normalize="maybe"), {}, 400, ["normalize", "maybe"]),
        ("unknown input", _json(image_request([data_uri(GOOD_JPEG)], colour="red")), {}, 400, ["unknown input 'colour'"]),
        ("unknown output", _json(image_request([data_uri(GOOD_JPEG)]) | {"outputs": [{"name": "logits"}]}), {}, 400, ["unknown output 'logits'"]),
        ("too many images", _json(image_request([data_uri(GOOD_JPEG)] * 9)), {}, 413, ["9 images", "limit of 8"]),
        ("bad header length", _image(data_uri(GOOD_JPEG)), {"Inference-Header-Content-Length": "999999"}, 400, ["Inference-Header-Content-Length"]),
        ("unknown encoding", _image(data_uri(GOOD_JPEG)), {"Content-Encoding": "br"}, 400, ["Content-Encoding"]),
        ("bad timeout", _json(image_request([data_uri(GOOD_JPEG)]) | {"parameters": {"timeout": "soon"}}), {}, 400, ["timeout"]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cases(image_host):
    return {case[0]: case[1:] for case in _bad_cases(image_host)}


@pytest.mark.parametrize("case", [c[0] for c in _bad_cases("http://x")])
def test_bad_request_is_a_clear_4xx_and_server_stays_healthy(case, cases, dinov2_server):
    body, headers, status, words = cases[case]
    response = httpx.post(dinov2_server.infer_url(), content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    good = httpx.post(dinov2_server.infer_url(), json=image_request([data_uri(GOOD_JPEG)]), timeout=30)
    assert good.status_code == 200 and embeddings_of(good).shape == (1, 32)


def test_unknown_model_is_404_on_every_model_route(dinov2_server):
    for method, path in [
        ("POST", "/v2/models/nope/infer"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/nope/stats"),
        ("POST", "/v2/models/dinov2-large/versions/7/infer"),
    ]:
        response = httpx.request(method, dinov2_server.url + path, json=image_request(["x"]))
        assert response.status_code == 404, path
        assert "nope" in response.json()["error"] or "version '7'" in response.json()["error"]


def test_unrouted_paths_and_methods_answer_with_error_key(dinov2_server):
    missing = httpx.get(dinov2_server.url + "/v3/whatever")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.get(dinov2_server.infer_url())
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_oversized_body_is_413_before_reading_it(tiny_models, tmp_path):
    settings = server_settings(tiny_models["dinov2"], tmp_path, max_request_bytes=4096)
    with run_server(settings) as server:
        response = httpx.post(server.infer_url(), content=b"x" * 10_000, timeout=30)
        assert response.status_code == 413 and "4096" in response.json()["error"]


def test_pooling_the_family_cannot_do_lists_what_it_can(tiny_models, tmp_path):
    with run_server(server_settings(tiny_models["swinv2"], tmp_path)) as server:
        response = httpx.post(
            server.infer_url(), json=image_request([data_uri(GOOD_JPEG)], pooling_strategy="cls")
        )
        assert response.status_code == 400
        message = response.json()["error"]
        assert "'cls' is not supported" in message and "mean, max" in message
        metadata = httpx.get(f"{server.url}/v2/models/{server.model}").json()
        assert metadata["parameters"]["pooling_strategies"] == ["mean", "max"]
