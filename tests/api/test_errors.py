"""Bad requests: each a 4xx `{"error": ...}` naming the problem, and the server answers the
next good request normally."""

from __future__ import annotations

import httpx

from tests.support import data_uri, encode, image_request, photo, run_server, server_settings

GOOD_JPEG = encode(photo("astronaut").resize((64, 64)))


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
