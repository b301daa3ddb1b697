"""Several models in one server (MODEL_REPOSITORY): each request answered by its own model
from both transports, the repository API (index, load, unload) and MODEL_TTL_S /
MAX_LOADED_MODELS while other models serve traffic, per-model settings and metrics."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from app.inference.model_configs import RepositoryError, model_configs
from tests.support import (
    app_process,
    data_uri,
    embeddings_of,
    encode,
    free_port,
    image_request,
    photo,
    run_server,
    server_settings,
)

IMAGES = [data_uri(encode(photo(name).resize((96, 80)))) for name in ("chelsea", "coffee", "astronaut")]


def make_repository(root, tiny_models, models: dict[str, tuple[str, dict | None]]):
    """models: name -> (tiny family, serving.json or None)."""
    for name, (family, own) in models.items():
        shutil.copytree(tiny_models[family], root / name)
        if own is not None:
            (root / name / "serving.json").write_text(json.dumps(own))
    return root


def single_model_embeddings(tiny_models, tmp_path, family: str, **settings) -> np.ndarray:
    """The reference: the same model served alone with MODEL_ID."""
    with run_server(
        server_settings(tiny_models[family], tmp_path / f"single-{family}", **settings)
    ) as server:
        return embeddings_of(httpx.post(server.infer_url(), json=image_request(IMAGES), timeout=60))


def grpc_embeddings(client, model: str, images: list[str]) -> np.ndarray:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array([i.encode() for i in images], dtype=np.object_))
    result = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("raw_embeddings")])
    return result.as_numpy("raw_embeddings")


def infer(server, model: str, images=IMAGES) -> httpx.Response:
    return httpx.post(server.infer_url(model), json=image_request(images), timeout=60)


def index(server) -> dict[str, tuple[str, str]]:
    entries = httpx.post(f"{server.url}/v2/repository/index").json()
    return {e["name"]: (e["state"], e["reason"]) for e in entries}


def test_two_models_under_concurrent_load_from_both_transports(tiny_models, tmp_path):
    repository = make_repository(
        tmp_path / "repo",
        tiny_models,
        {
            "dino": ("dinov2", None),
            "vit": ("vit", {"pooling_strategy": "mean", "normalize_embeddings": True, "max_batch_size": 4}),
        },
    )
    expected = {
        "dino": single_model_embeddings(tiny_models, tmp_path, "dinov2"),
        "vit": single_model_embeddings(
            tiny_models, tmp_path, "vit", pooling_strategy="mean", normalize_embeddings=True
        ),
    }
    assert not np.allclose(expected["dino"][:, :8], expected["vit"][:, :8])
    # The cache off: 96 calls over 3 photos are 96 forwards, which the counts below check.
    settings = server_settings(
        None, tmp_path, model_repository=repository, grpc_port=free_port(), cache_bytes=0
    )
    with run_server(settings) as server:
        assert index(server) == {"dino": ("READY", ""), "vit": ("READY", "")}
        metadata = httpx.get(f"{server.url}/v2/models/vit").json()["parameters"]
        assert (metadata["default_pooling_strategy"], metadata["normalize_embeddings"]) == ("mean", True)

        def one_call(i: int):
            model = ("dino", "vit")[i % 2]
            image = i % len(IMAGES)
            if i % 4 < 2:
                got = embeddings_of(infer(server, model, [IMAGES[image]]))
            else:
                client = triton.InferenceServerClient(server.grpc_target)
                try:
                    got = grpc_embeddings(client, model, [IMAGES[image]])
                finally:
                    client.close()
            return model, image, got

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one_call, range(96)))
        for model, image, got in results:
            np.testing.assert_allclose(got[0], expected[model][image], rtol=1e-4, atol=1e-5)
        text = httpx.get(f"{server.url}/metrics").text
        images = {
            s.labels["model"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "embed_images_total"
        }
        assert images == {"dino": 48, "vit": 48}
        stats = httpx.get(f"{server.url}/v2/models/stats").json()["model_stats"]
        assert {s["name"]: s["inference_count"] for s in stats} == {"dino": 48, "vit": 48}


def test_load_unload_and_ttl_while_another_model_serves(tiny_models, tmp_path):
    repository = make_repository(
        tmp_path / "repo",
        tiny_models,
        {
            "busy": ("dinov2", None),
            "vit": ("vit", None),
            "lazy": ("convnext", {"load_at_startup": False}),
        },
    )
    settings = server_settings(
        None,
        tmp_path,
        model_repository=repository,
        grpc_port=free_port(),
        model_ttl_s=1.0,
        model_control_mode="explicit",
    )
    with run_server(settings) as server:
        assert index(server)["lazy"] == ("UNAVAILABLE", "not loaded yet")
        reference = embeddings_of(infer(server, "vit"))
        # 'busy' answers throughout: it is never idle long enough for the TTL.
        failures, answered, stop = [], [], threading.Event()

        def traffic():
            while not stop.is_set():
                response = infer(server, "busy", IMAGES[:1])
                (answered if response.status_code == 200 else failures).append(response.status_code)
                time.sleep(0.02)

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            # Unload through REST: 503 for that model only, with the reason and the way back.
            assert httpx.post(f"{server.url}/v2/repository/models/vit/unload").status_code == 200
            refused = infer(server, "vit")
            assert refused.status_code == 503
            assert refused.json()["error"] == (
                "model 'vit' is not loaded (unloaded through the repository API); load it with "
                "POST /v2/repository/models/vit/load"
            )
            assert httpx.get(f"{server.url}/v2/models/vit/ready").status_code == 503
            assert index(server)["vit"] == ("UNAVAILABLE", "unloaded through the repository API")
            # A start-up model unloaded through the API serves nothing: the server is not ready.
            assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
            # Load through gRPC; the embeddings are the same as before.
            client = triton.InferenceServerClient(server.grpc_target)
            try:
                client.load_model("vit")
                assert client.is_model_ready("vit")
                np.testing.assert_array_equal(embeddings_of(infer(server, "vit")), reference)
                client.unload_model("vit")
                assert not client.is_model_ready("vit")
                assert client.get_model_repository_index(as_json=True)["models"][2]["state"] == "UNAVAILABLE"
                client.load_model("vit")
            finally:
                client.close()
            # A model not loaded at start-up loads on its first request.
            assert infer(server, "lazy").status_code == 200
            # Idle past MODEL_TTL_S: unloaded; the next request loads it again.
            deadline = time.monotonic() + 10
            while index(server)["vit"][0] == "READY" and time.monotonic() < deadline:
                time.sleep(0.1)
            state, reason = index(server)["vit"]
            assert state == "UNAVAILABLE" and "idle (MODEL_TTL_S)" in reason
            # Unloaded when idle, it loads on its next request: the server stays ready.
            assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
            np.testing.assert_array_equal(embeddings_of(infer(server, "vit")), reference)
            assert infer(server, "nope").status_code == 404
            assert httpx.post(f"{server.url}/v2/repository/models/nope/load").status_code == 404
        finally:
            stop.set()
            thread.join()
        assert failures == [] and len(answered) > 10
        assert index(server)["busy"] == ("READY", "")


def test_a_loading_model_is_503_for_that_model_only(tiny_models, tmp_path):
    repository = make_repository(tmp_path / "repo", tiny_models, {"a": ("dinov2", None), "b": ("vit", None)})
    settings = server_settings(None, tmp_path, model_repository=repository, model_control_mode="explicit")
    with run_server(settings) as server:
        assert httpx.post(f"{server.url}/v2/repository/models/b/unload").status_code == 200
        model_b = server.app.state.models.get("b")
        real_loader = model_b.loader
        model_b.loader = lambda settings: (time.sleep(1.5), real_loader(settings))[1]  # a slow disk
        with ThreadPoolExecutor(1) as pool:
            loading = pool.submit(httpx.post, f"{server.url}/v2/repository/models/b/load", timeout=60)
            time.sleep(0.4)
            refused = infer(server, "b")
            assert (
                refused.status_code == 503
                and refused.json()["error"] == "model 'b' is loading; retry shortly"
            )
            assert refused.headers["retry-after"] == "1"
            assert index(server)["b"] == ("LOADING", "loading")
            assert infer(server, "a").status_code == 200
            # b is a start-up model that does not serve yet: the server is not ready.
            assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
            assert loading.result().status_code == 200
        assert infer(server, "b").status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        # A model config sent with the load cannot be honoured: refused, not ignored.
        refused = httpx.post(
            f"{server.url}/v2/repository/models/b/load", json={"parameters": {"config": "{}"}}
        )
        assert refused.status_code == 400
        assert (
            refused.json()["error"]
            == "load parameter 'config' is not supported: a model loads from its own folder"
        )


def test_max_loaded_models_unloads_the_least_recently_used(tiny_models, tmp_path):
    repository = make_repository(tmp_path / "repo", tiny_models, {"a": ("dinov2", None), "b": ("vit", None)})
    settings = server_settings(None, tmp_path, model_repository=repository, max_loaded_models=1)
    with run_server(settings) as server:
        assert index(server) == {
            "a": ("READY", ""),
            "b": ("UNAVAILABLE", "not loaded yet"),
        }
        first_a = embeddings_of(infer(server, "a"))
        assert infer(server, "b").status_code == 200  # a is idle: it makes room
        state, reason = index(server)["a"]
        assert (state, index(server)["b"][0]) == ("UNAVAILABLE", "READY")
        assert "make room for 'b' (MAX_LOADED_MODELS=1)" in reason
        np.testing.assert_array_equal(embeddings_of(infer(server, "a")), first_a)
        assert index(server)["b"][0] == "UNAVAILABLE"


def configs_of(settings):
    return model_configs(settings.server, settings.model)


def test_repository_settings_files_are_checked_at_start_up(tiny_models, tmp_path):
    repository = make_repository(tmp_path / "repo", tiny_models, {"m": ("vit", {"pooling": "mean"})})
    with pytest.raises(RepositoryError, match=r"unknown setting\(s\) pooling; a model may set"):
        configs_of(server_settings(None, tmp_path, model_repository=repository))
    (repository / "m" / "serving.json").write_text('{"pooling_strategy": "median"}')
    with pytest.raises(RepositoryError, match="pooling_strategy"):
        configs_of(server_settings(None, tmp_path, model_repository=repository))
    (repository / "m" / "serving.json").write_text('{"max_batch_size": 3, "load_at_startup": false}')
    (repository / ".cache").mkdir()
    (repository / "no-model").mkdir()
    [config] = configs_of(server_settings(None, tmp_path, model_repository=repository))
    assert (config.name, config.settings.max_batch_size, config.load_at_startup) == ("m", 3, False)
    with pytest.raises(ValueError, match="not both"):
        server_settings(tiny_models["vit"], tmp_path, model_repository=repository)


def test_repository_from_the_environment_with_a_hub_id_in_serving_json(tiny_models, tmp_path, monkeypatch):
    # MODEL_REPOSITORY in the environment (the usual way) must not leak into each model's
    # settings, where it would clash with a serving.json model_id.
    repository = make_repository(tmp_path / "repo", tiny_models, {"m": ("vit", None)})
    (repository / "hub").mkdir()
    (repository / "hub" / "serving.json").write_text('{"model_id": "org/some-model"}')
    monkeypatch.setenv("MODEL_REPOSITORY", str(repository))
    configs = {c.name: c.settings for c in configs_of(server_settings(None, tmp_path))}
    assert configs["hub"].model_id == "org/some-model"
    assert "model_repository" not in type(configs["hub"]).model_fields  # a model setting no more
    assert configs["m"].model_dir == repository / "m"


def test_python_m_app_serves_a_repository_over_both_transports(tiny_models, tmp_path):
    import signal

    repository = make_repository(tmp_path / "repo", tiny_models, {"a": ("dinov2", None), "b": ("vit", None)})
    grpc_port = free_port()
    flags = ("--model-repository", str(repository), "--grpc-port", str(grpc_port), "--shutdown-drain-s", "0")
    with app_process(None, tmp_path, *flags) as process:
        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for model in ("a", "b"):
                response = httpx.post(
                    f"{process.url}/v2/models/{model}/infer", json=image_request(IMAGES), timeout=60
                )
                np.testing.assert_array_equal(grpc_embeddings(client, model, IMAGES), embeddings_of(response))
        finally:
            client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM)
