"""Backpressure, deadlines, failures that stay contained, and graceful shutdown."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import (
    LOOPBACK,
    app_process,
    data_uri,
    encode,
    free_port,
    image_request,
    photo,
    run_server,
    server_settings,
    slow_server,
)

GOOD = encode(photo("astronaut").resize((64, 64)))
ROOT = Path(__file__).resolve().parents[2]


def _post(server, payload, timeout=30):
    return httpx.post(server.infer_url(), json=payload, timeout=timeout)


def test_overload_answers_503_with_retry_after_at_once(tiny_models, tmp_path):
    settings = server_settings(tiny_models["dinov2"], tmp_path, max_queue_images=2)
    with run_server(settings) as server, slow_server(2.0, GOOD) as slow:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(_post, server, image_request([f"{slow}/{i}.jpg"])) for i in range(2)]
            time.sleep(0.5)  # both admitted, both waiting on the slow URL
            started = time.monotonic()
            refused = _post(server, image_request([data_uri(GOOD)]))
            assert time.monotonic() - started < 1.0
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "capacity" in refused.json()["error"]
            assert all(f.result().status_code == 200 for f in held)
        assert _post(server, image_request([data_uri(GOOD)])).status_code == 200


SLOW_FORWARD_S = 2.0


@pytest.fixture
def slow_model(tiny_models, tmp_path):
    """A real server whose model takes SLOW_FORWARD_S per forward pass (failure injection);
    `forward_started` is set when one begins."""
    settings = server_settings(tiny_models["dinov2"], tmp_path, max_batch_size=1)
    with run_server(settings) as server:
        batcher = server.served.batcher
        real = batcher.run_batch
        server.forward_started = threading.Event()

        def slow(pixels, requests):
            server.forward_started.set()
            time.sleep(SLOW_FORWARD_S)
            return real(pixels, requests)

        batcher.run_batch = slow
        yield server


def test_a_request_past_its_deadline_is_dropped_not_computed(slow_model):
    stats_url = f"{slow_model.url}/v2/models/{slow_model.model}/stats"
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(_post, slow_model, image_request([data_uri(GOOD)]))
        # The model is busy with it (waited for, not slept: on a loaded machine the busy
        # request's decoding can take longer than any fixed pause, and the late one's image
        # would then reach the idle model first).
        assert slow_model.forward_started.wait(30)
        late = _post(slow_model, image_request([data_uri(GOOD)] * 3) | {"parameters": {"timeout": 200_000}})
        assert late.status_code == 504 and "200 ms" in late.json()["error"]
        assert busy.result().status_code == 200
    time.sleep(SLOW_FORWARD_S + 0.5)  # had the three images been queued, one would have run by now
    assert httpx.get(stats_url).json()["model_stats"][0]["inference_count"] == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_inference_worker_is_unready_then_restarted(tiny_models, tmp_path):
    with run_server(server_settings(tiny_models["dinov2"], tmp_path)) as server:
        service = server.served

        def die(pixels, requests):
            raise SystemExit("the worker thread goes down")

        service.batcher.run_batch = die
        failed = _post(server, image_request([data_uri(GOOD)]))
        assert failed.status_code == 503 and "inference worker" in failed.json()["error"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.1)
        assert _post(server, image_request([data_uri(GOOD)])).status_code == 200


def test_sigterm_drains_then_exits(tiny_models, tmp_path):
    import grpc

    from app.grpc_api.v2 import grpc_service_pb2 as pb
    from app.grpc_api.v2.grpc_service_pb2_grpc import GRPCInferenceServiceStub

    grpc_port = free_port()
    with (
        app_process(
            tiny_models["dinov2"],
            tmp_path,
            "--shutdown-drain-s",
            "1.5",
            "--log-level",
            "warning",
            "--grpc-port",
            str(grpc_port),
        ) as process,
        grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        url = process.url
        stub = GRPCInferenceServiceStub(channel)

        def grpc_infer(image: bytes):
            message = pb.ModelInferRequest(model_name="dinov2")
            message.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
                image
            )
            return stub.ModelInfer(message, timeout=30)

        # The gRPC call outlasts the HTTP one: it is still running when uvicorn has closed.
        with slow_server(2.5, GOOD) as slow, slow_server(4.0, GOOD) as slower:
            result = {}
            in_flight = [
                threading.Thread(
                    target=lambda: result.update(
                        r=httpx.post(
                            f"{url}/v2/models/dinov2/infer", json=image_request([f"{slow}/a.jpg"]), timeout=30
                        )
                    )
                ),
                threading.Thread(target=lambda: result.update(g=grpc_infer(f"{slower}/b.jpg".encode()))),
            ]
            for thread in in_flight:
                thread.start()
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert httpx.get(f"{url}/v2/health/ready").status_code == 503
            refused = httpx.post(f"{url}/v2/models/dinov2/infer", json=image_request([data_uri(GOOD)]))
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
            with pytest.raises(grpc.RpcError) as caught:
                grpc_infer(GOOD)
            assert (
                caught.value.code() == grpc.StatusCode.UNAVAILABLE
                and "shutting down" in caught.value.details()
            )
            for thread in in_flight:
                thread.join(30)
            assert result["r"].status_code == 200  # the in-flight requests finished
            assert result["g"].outputs[0].name == "output"
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown.
        assert process.wait(30) in (0, -signal.SIGTERM)


def test_body_bytes_in_flight_are_bounded(tiny_models, tmp_path):
    """A body that is still arriving holds its declared size; past the bound, the next
    request is refused at once (503 + Retry-After) before a byte of it is read."""
    settings = server_settings(
        tiny_models["dinov2"],
        tmp_path,
        max_request_bytes=1024 * 1024,
        max_request_bytes_in_flight=1536 * 1024,
    )
    padded = json.dumps(image_request([data_uri(GOOD)])).encode().ljust(600 * 1024)
    with run_server(settings) as server:
        path = f"/v2/models/{server.model}/infer"
        with socket.create_connection((LOOPBACK, settings.port)) as slow_client:
            slow_client.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {1024 * 1024}\r\n\r\n".encode()
                + b"{" * 1000
            )
            time.sleep(0.5)  # the server has read the headers and holds 1 MiB for this body
            refused = httpx.post(server.infer_url(), content=padded, timeout=30)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "MAX_REQUEST_BYTES_IN_FLIGHT" in refused.json()["error"]
            assert _post(server, image_request([data_uri(GOOD)])).status_code == 200  # small ones fit
        time.sleep(0.5)  # the slow client went away: its bytes are given back
        assert httpx.post(server.infer_url(), content=padded, timeout=30).status_code == 200
        assert server.app.state.plane.body_budget.used == 0


def test_waiting_past_the_deadline_for_the_decoding_budget_is_a_503(tiny_models, tmp_path):
    settings = server_settings(
        tiny_models["dinov2"], tmp_path, max_decoding_pixels=64 * 64, fetch_total_timeout_s=0.6
    )
    with run_server(settings) as server:
        preparer = server.served.preparer
        finish = preparer._finish

        def slow_finish(image, preprocessor):  # failure injection: a decode that takes 1.5 s
            time.sleep(1.5)
            return finish(image, preprocessor)

        preparer._finish = slow_finish
        with ThreadPoolExecutor(1) as pool:
            holding = pool.submit(_post, server, image_request([data_uri(GOOD)]))
            time.sleep(0.2)  # its 64x64 pixels fill the budget
            waiting = _post(server, image_request([data_uri(GOOD)]))
            assert waiting.status_code == 503 and waiting.headers["retry-after"] == "1"
            assert "MAX_DECODING_PIXELS" in waiting.json()["error"]
            slow = holding.result()
            # Inline images, so the time went to the server's decoding: 503, retry (not the client's 400).
            assert slow.status_code == 503 and slow.headers["retry-after"] == "1"
            assert "too busy to decode this request's images within 0.6 s" in slow.json()["error"]
        preparer._finish = finish
        time.sleep(1.5)  # the slow decode ends and gives its pixels back
        assert preparer.pixel_budget.available == 64 * 64
        assert _post(server, image_request([data_uri(GOOD)])).status_code == 200
