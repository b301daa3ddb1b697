"""Health, readiness and metadata before, during and after loading; the docs page."""

from __future__ import annotations

import asyncio

import httpx

from app.server import create_app
from tests.support import run_server, server_settings


def _get_without_lifespan(app, paths):
    """Call the app before its lifespan ran: the model is not loaded yet."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(go())


def test_before_loading_live_but_not_ready(tiny_models, tmp_path):
    settings = server_settings(tiny_models["dinov2"], tmp_path, model_name="tiny")
    live, ready, model_ready, metadata, server = _get_without_lifespan(
        create_app(settings),
        ["/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready", "/v2/models/tiny", "/v2"],
    )
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (503, {"ready": False})
    assert (model_ready.status_code, model_ready.json()) == (503, {"name": "tiny", "ready": False})
    assert metadata.status_code == 503 and "loading" in metadata.json()["error"]
    assert server.status_code == 200 and server.json()["extensions"] == [
        "binary_tensor_data",
        "statistics",
        "model_repository",
    ]


def test_after_loading(dinov2_server):
    url = dinov2_server.url
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    for prefix in ("/v2/models/dinov2-large", "/v2/models/dinov2-large/versions/1"):
        assert httpx.get(f"{url}{prefix}/ready").json() == {"name": "dinov2-large", "ready": True}
        metadata = httpx.get(f"{url}{prefix}").json()
        assert metadata["name"] == "dinov2-large" and metadata["versions"] == ["1"]
        inputs = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
        assert inputs == {
            "image": ("BYTES", [-1]),
            "pooling_strategy": ("BYTES", [1]),
            "normalize": ("BYTES", [1]),
            "include_raw": ("BYTES", [1]),
        }
        outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
        assert outputs == {"output": ("BYTES", [1]), "raw_embeddings": ("FP32", [-1, 32])}
        parameters = metadata["parameters"]
        assert parameters["pooling_strategies"] == ["cls", "mean", "max"]
        assert parameters["default_pooling_strategy"] == "cls"
        assert parameters["device"] == "cpu" and parameters["dtype"] == "float32"


def test_a_model_that_fails_to_load_is_never_ready(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-family"}')
    settings = server_settings(broken, tmp_path)
    with run_server(settings, wait_ready=False) as server:
        service = server.served
        for _ in range(200):
            if service.broken:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert service.broken
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 503
        for response in (
            httpx.post(server.infer_url(), json={"inputs": []}),
            httpx.get(server.infer_url()[:-6]),
        ):
            message = response.json()["error"]
            assert response.status_code == 503
            assert message == f"model '{server.model}' failed to load; see the server log"
        assert "no-such-family" in service.load_error  # the details stay in the server's log


def test_docs_page_shows_the_original_payloads(dinov2_server):
    assert "swagger" in httpx.get(f"{dinov2_server.url}/docs").text.lower()
    schema = httpx.get(f"{dinov2_server.url}/openapi.json").json()
    body = schema["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]["content"]
    examples = body["application/json"]["examples"]
    assert {"single_url", "single_base64", "batch"} <= set(examples)
    assert examples["batch"]["value"]["inputs"][1]["name"] == "include_raw"
    assert "InferRequest" in schema["components"]["schemas"]


def test_every_docs_example_works_as_it_is_offline(dinov2_server):
    """Swagger's "Try it out": model_name is filled with the served model, and each example
    that does not say it needs the internet answers 200 as it is."""
    from app.api.examples import INFER_EXAMPLES, NEEDS_EGRESS

    schema = httpx.get(f"{dinov2_server.url}/openapi.json").json()
    operation = schema["paths"]["/v2/models/{model_name}/infer"]["post"]
    [parameter] = [p for p in operation["parameters"] if p["name"] == "model_name"]
    name = parameter["example"]
    assert httpx.get(f"{dinov2_server.url}/v2/models/{name}/ready").status_code == 200
    offline = {key: e for key, e in INFER_EXAMPLES.items() if NEEDS_EGRESS not in e["summary"]}
    assert len(offline) == 3
    for key, example in offline.items():
        response = httpx.post(
            f"{dinov2_server.url}/v2/models/{name}/infer", json=example["value"], timeout=60
        )
        assert response.status_code == 200, (key, response.text)
    for example in INFER_EXAMPLES.values():  # no placeholder and no host that cannot answer
        text = str(example["value"])
        assert "..." not in text and "example.com" not in text
