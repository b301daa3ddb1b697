"""Metrics, request ids and logs, through the real server."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import app_process, data_uri, encode, image_request, metric, photo, scrape, static_server

IMAGE = data_uri(encode(photo("coffee").resize((96, 64))))
INFER = "/v2/models/{model_name}/infer"
ROOT = Path(__file__).resolve().parents[2]


def test_metrics_move_by_the_right_amounts(dinov2_server):
    before = scrape(dinov2_server)
    for count in (1, 3, 2):
        # The cache off: each copy of the image is computed, the counts are the forwards'.
        body = image_request([IMAGE] * count) | {"parameters": {"cache": False}}
        assert httpx.post(dinov2_server.infer_url(), json=body).status_code == 200
    assert httpx.post(dinov2_server.infer_url(), json={"inputs": []}).status_code == 400
    after = scrape(dinov2_server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    model = {"model": dinov2_server.model}  # per-model series carry the model's name
    assert delta("embed_images_total", **model) == 6
    assert delta("embed_inference_count_total", **model) == 6
    executions = delta("embed_execution_count_total", **model)
    assert 1 <= executions <= 6 and delta("embed_batch_size_count", **model) == executions
    assert delta("embed_batch_size_sum", **model) == 6
    assert delta("embed_http_requests_total", route=INFER, method="POST", status="200") == 3
    assert delta("embed_http_requests_total", route=INFER, method="POST", status="400") == 1
    assert delta("embed_http_request_duration_seconds_count", route=INFER) == 4
    assert delta("embed_queue_duration_seconds_count", **model) == 3
    assert delta("embed_compute_duration_seconds_count", **model) == executions
    assert delta("embed_preprocess_duration_seconds_count", **model) == 3
    assert metric(after, "embed_images_waiting", **model) == 0
    assert metric(after, "embed_model_load_duration_seconds", **model) > 0
    info = [labels for (name, labels) in after if name == "embed_model_info"]
    assert info and dict(info[0])["device"] == "cpu" and dict(info[0])["model"] == "dinov2-large"


def test_request_id_round_trips(dinov2_server):
    by_header = httpx.post(
        dinov2_server.infer_url(), json=image_request([IMAGE]), headers={"X-Request-ID": "abc-123"}
    )
    assert by_header.headers["x-request-id"] == "abc-123" and by_header.json()["id"] == "abc-123"
    by_body = httpx.post(dinov2_server.infer_url(), json=image_request([IMAGE]) | {"id": "v2-id-7"})
    assert by_body.headers["x-request-id"] == "v2-id-7" and by_body.json()["id"] == "v2-id-7"
    failed = httpx.post(
        dinov2_server.infer_url(),
        json={"id": "bad-1", "inputs": [{"name": "x"}]},
        headers={"X-Request-ID": "hdr-1"},
    )
    assert failed.status_code == 400 and failed.headers["x-request-id"] == "hdr-1"
    unsafe = httpx.get(f"{dinov2_server.url}/v2/health/live", headers={"X-Request-ID": "evil\tline"})
    assert unsafe.headers["x-request-id"] != "evil\tline"  # replaced by a generated id


@pytest.mark.slow
def test_json_logs_are_one_object_per_line(tiny_models, tmp_path):
    flags = ("--log-format", "json", "--shutdown-drain-s", "0")
    with app_process(tiny_models["dinov2"], tmp_path, *flags, stderr=subprocess.PIPE) as process:
        url = process.url
        folder = tmp_path / "images"
        folder.mkdir()
        (folder / "cat.jpg").write_bytes(encode(photo("chelsea")))
        with static_server(folder) as host:
            secret = f"{host}/cat.jpg?token=SECRET-TOKEN"
            ok = httpx.post(
                f"{url}/v2/models/dinov2/infer",
                json=image_request([secret, IMAGE]),
                headers={"X-Request-ID": "log-1"},
            )
            assert ok.status_code == 200
        assert httpx.post(f"{url}/v2/models/dinov2/infer", json={"inputs": []}).status_code == 400
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    lines = [line for line in stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    requests = [r for r in records if r["message"] == "request" and r["route"].endswith("/infer")]
    assert {"request_id": "log-1", "model": "dinov2", "images": 2, "status": 200}.items() <= requests[
        0
    ].items()
    assert requests[1]["status"] == 400 and requests[1]["images"] is None
    assert any("loaded model" in r["message"] for r in records)
    assert any("shutting down" in r["message"] for r in records)
    assert "SECRET-TOKEN" not in stderr and "base64" not in stderr


def test_docs_assets_are_counted_by_their_route(dinov2_server):
    page = httpx.get(f"{dinov2_server.url}/docs").text
    asset = page.split('src="', 1)[1].split('"', 1)[0]
    assert httpx.get(f"{dinov2_server.url}{asset}").status_code == 200
    assert httpx.get(f"{dinov2_server.url}/openapi.json").status_code == 200
    metrics = httpx.get(f"{dinov2_server.url}/metrics").text
    routes = {
        sample.labels["route"]
        for family in text_string_to_metric_families(metrics)
        if family.name == "embed_http_requests"
        for sample in family.samples
    }
    assert {"/static-offline-docs/{path}", "/openapi.json", "/docs"} <= routes
    assert "unmatched" not in routes


def test_sigterm_on_an_idle_server_does_not_wait_out_the_drain(tiny_models, tmp_path):
    """Nothing in flight and nobody sending: the drain ends after a quiet second, not after
    SHUTDOWN_DRAIN_S (30 s here)."""
    import time

    with app_process(tiny_models["dinov2"], tmp_path, "--shutdown-drain-s", "30") as process:
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        elapsed = time.monotonic() - started
    print(f"idle SIGTERM: exit {code} in {elapsed:.1f} s")
    assert code in (0, -signal.SIGTERM)
    assert elapsed < 20
