"""The embedding cache through the real server and a real redis-server: hits answer what
misses answered, byte for byte, on every route; identical inputs in flight are computed
once; variants that change the answer never share an entry."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.cache.images import new_image, new_image_bytes
from tests.support import (
    data_uri,
    embeddings_of,
    free_port,
    image_request,
    metric,
    run_server,
    scrape,
    server_settings,
)

MODEL = "cached"


@pytest.fixture(scope="module")
def server(tiny_models, redis, tmp_path_factory):
    settings = server_settings(
        tiny_models["dinov2"],
        tmp_path_factory.mktemp("srv"),
        model_name=MODEL,
        grpc_port=free_port(),
        cache_url=redis.url,
        cache_timeout_ms=2000,  # behaviour, not speed: a loaded machine must not turn hits into misses
    )
    with run_server(settings) as running:
        yield running


def stats(server) -> dict:
    answer = httpx.get(f"{server.url}/v2/models/{server.model}/stats").json()["model_stats"][0]
    inference = answer["inference_stats"]
    return {
        "forwards": answer["inference_count"],
        "hits": inference["cache_hit"]["count"],
        "misses": inference["cache_miss"]["count"],
    }


def moved(before: dict, after: dict) -> dict:
    return {key: after[key] - before[key] for key in before}


def infer(server, images, cache: bool | None = None, **flags) -> httpx.Response:
    body = image_request(images, **flags)
    body["id"] = "one"  # else each answer carries an id of its own
    if cache is not None:
        body["parameters"] = {"cache": cache}
    response = httpx.post(server.infer_url(), json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def test_a_hit_answers_the_misses_bytes_on_rest_json_and_binary(server):
    image = new_image()
    before = stats(server)
    miss = infer(server, [image], include_raw="true")
    assert moved(before, stats(server)) == {"forwards": 1, "hits": 0, "misses": 1}
    hit = infer(server, [image], include_raw="true")
    assert moved(before, stats(server)) == {"forwards": 1, "hits": 1, "misses": 1}
    assert hit.content == miss.content  # the JSON header and the binary raw_embeddings
    assert "application/octet-stream" in hit.headers["content-type"]
    json_only = [infer(server, [image]) for _ in range(2)]
    assert json_only[0].content == json_only[1].content
    assert moved(before, stats(server))["forwards"] == 1


def test_a_hit_on_grpc_and_the_openai_route_equals_the_miss(server):
    data = new_image_bytes()
    client = triton.InferenceServerClient(server.grpc_target)
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=np.object_))
    outputs = [triton.InferRequestedOutput("raw_embeddings")]
    before = stats(server)
    first = client.infer(MODEL, [image], outputs=outputs).as_numpy("raw_embeddings")
    second = client.infer(MODEL, [image], outputs=outputs).as_numpy("raw_embeddings")
    assert first.tobytes() == second.tobytes()
    assert moved(before, stats(server)) == {"forwards": 1, "hits": 1, "misses": 1}
    # The same bytes as a data URI over REST: the key is the image's bytes, not their wrapping.
    rest = embeddings_of(infer(server, [data_uri(data)], normalize="false"))
    assert rest.tobytes() == first.tobytes()
    client.close()

    url = f"{server.url}/v1/embeddings"
    request = {"model": MODEL, "input": [new_image()], "modality": "image"}
    answers = [httpx.post(url, json=request, timeout=60) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["data"] == answers[1].json()["data"]
    assert moved(before, stats(server))["forwards"] == 2


def test_cache_false_neither_reads_nor_writes(server):
    image = new_image()
    before = stats(server)
    infer(server, [image], cache=False)
    infer(server, [image], cache=False)
    assert moved(before, stats(server)) == {"forwards": 2, "hits": 0, "misses": 0}
    infer(server, [image])  # not written by the bypassing requests: a miss
    assert moved(before, stats(server)) == {"forwards": 3, "hits": 0, "misses": 1}

    client = triton.InferenceServerClient(server.grpc_target)
    element = triton.InferInput("image", [1], "BYTES")
    element.set_data_from_numpy(np.array([new_image_bytes()], dtype=np.object_))
    for _ in range(2):
        client.infer(MODEL, [element], parameters={"cache": False})
    client.close()
    request = {"model": MODEL, "input": [new_image()], "modality": "image", "cache": False}
    for _ in range(2):
        assert httpx.post(f"{server.url}/v1/embeddings", json=request, timeout=60).status_code == 200
    assert moved(before, stats(server)) == {"forwards": 7, "hits": 0, "misses": 1}
    bad = image_request([image])
    bad["parameters"] = {"cache": "sometimes"}
    refused = httpx.post(server.infer_url(), json=bad)
    assert refused.status_code == 400 and "cache" in refused.json()["error"]


def test_one_entry_serves_both_normalisations_and_poolings_keep_their_own(server):
    image = new_image()
    before = stats(server)
    normalised = embeddings_of(infer(server, [image], normalize="true"))
    raw = embeddings_of(infer(server, [image], normalize="false"))
    assert moved(before, stats(server)) == {"forwards": 1, "hits": 1, "misses": 1}
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(normalised, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    # What the server answers without the cache, for each variant.
    assert raw.tobytes() == embeddings_of(infer(server, [image], cache=False, normalize="false")).tobytes()
    assert (
        normalised.tobytes() == embeddings_of(infer(server, [image], cache=False, normalize="true")).tobytes()
    )
    mean = embeddings_of(infer(server, [image], pooling_strategy="mean", normalize="false"))
    assert moved(before, stats(server))["misses"] == 2  # another pooling: another entry
    assert not np.allclose(mean, raw)
    uncached_mean = infer(server, [image], cache=False, pooling_strategy="mean", normalize="false")
    assert mean.tobytes() == embeddings_of(uncached_mean).tobytes()


def test_sixteen_concurrent_requests_of_one_new_image_run_one_forward(server):
    image = new_image()
    before, samples = stats(server), scrape(server)
    answers: list = [None] * 16
    start = threading.Barrier(16)

    def send(index: int) -> None:
        start.wait()
        answers[index] = infer(server, [image]).content

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(answers)) == 1
    change = moved(before, stats(server))
    assert change["forwards"] == 1 and change["misses"] == 1
    after = scrape(server)
    coalesced = metric(after, "embed_cache_coalesced_total", model=MODEL) - metric(
        samples, "embed_cache_coalesced_total", model=MODEL
    )
    assert coalesced + change["hits"] == 15


def test_repeats_inside_a_request_and_requests_waiting_on_each_other(server):
    x, y = new_image(), new_image()
    before = stats(server)
    rows = embeddings_of(infer(server, [x, x, y, x]))
    assert moved(before, stats(server))["forwards"] == 2
    assert rows[0].tobytes() == rows[1].tobytes() == rows[3].tobytes()
    assert not np.array_equal(rows[0], rows[2])
    # A = [p, q] and B = [q, p] at once: each owns one image and waits for the other's;
    # neither may wait for the other before submitting its own.
    for _ in range(8):
        p, q = new_image(), new_image()
        results = together(server, {"A": [p, q], "B": [q, p]})
        assert results["A"][0].tobytes() == results["B"][1].tobytes()
        assert results["A"][1].tobytes() == results["B"][0].tobytes()
    assert moved(before, stats(server))["forwards"] == 2 + 16


def together(server, requests: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """The requests sent at once, each from its own thread; their embeddings."""
    results: dict[str, np.ndarray] = {}
    start = threading.Barrier(len(requests))

    def send(key: str) -> None:
        start.wait()
        results[key] = embeddings_of(infer(server, requests[key]))

    threads = [threading.Thread(target=send, args=(key,)) for key in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_a_bad_image_fails_its_request_and_leaves_no_entry(server):
    good = new_image()
    before = stats(server)
    bad = image_request([good, "data:image/jpeg;base64,bm90IGFuIGltYWdl"])
    answer = httpx.post(server.infer_url(), json=bad)
    assert answer.status_code == 400 and "element 1" in answer.json()["error"]
    infer(server, [good])  # computed now: the failed request published nothing
    assert moved(before, stats(server))["forwards"] == 1


def test_statistics_and_metrics_count_the_cache(server):
    image = new_image()
    samples = scrape(server)
    infer(server, [image])
    infer(server, [image])
    after = scrape(server)

    def change(name, **labels):
        return metric(after, name, **labels) - metric(samples, name, **labels)

    assert change("embed_cache_misses_total", model=MODEL) == 1
    assert change("embed_cache_hits_total", model=MODEL, tier="local") == 1
    assert change("embed_cache_bytes", model=MODEL) > 0
    assert metric(after, "embed_cache_shared_up") == 1
    assert change("embed_cache_shared_errors_total", model=MODEL) == 0


def test_texts_hit_like_images_and_keep_their_token_counts(text_models, tmp_path):
    settings = server_settings(text_models["clip"], tmp_path, model_name="search")
    long_text = "a photo of a cat " * 40  # over CLIP's 77 tokens: truncated
    with run_server(settings) as running:
        url = f"{running.url}/v1/embeddings"
        request = {"model": "search", "input": ["a cat", long_text, "a cat"]}
        before = stats(running)
        first = httpx.post(url, json=request, timeout=60).json()
        second = httpx.post(url, json=request, timeout=60).json()
        assert first["data"] == second["data"] and first["usage"] == second["usage"]
        # The repeat in the first request waits for its twin; the second request: three hits.
        assert moved(before, stats(running)) == {"forwards": 2, "hits": 3, "misses": 2}
        texts = {
            "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a cat", long_text]}]
        }
        v2 = httpx.post(running.infer_url(), json=texts, timeout=60)
        assert v2.status_code == 200 and v2.json()["parameters"]["texts_truncated"] == 1
        assert moved(before, stats(running))["forwards"] == 2  # both known by now
        fresh = dict(texts, parameters={"cache": False})
        uncached = httpx.post(running.infer_url(), json=fresh, timeout=60)
        assert embeddings_of(uncached).tobytes() == embeddings_of(v2).tobytes()


def test_cache_bytes_bounds_the_local_tier_under_a_stream_of_new_images(tiny_models, tmp_path):
    bound = 64 * 1024
    settings = server_settings(tiny_models["dinov2"], tmp_path, model_name="bounded", cache_bytes=bound)
    with run_server(settings) as running:
        for _ in range(40):
            infer(running, [new_image() for _ in range(8)])
        samples = scrape(running)
        assert 0 < metric(samples, "embed_cache_bytes", model="bounded") <= bound
        assert metric(samples, "embed_cache_evictions_total", model="bounded") > 0
        local = running.app.state.models.get("bounded").cache.local
        assert local.bytes <= bound and len(local) < 320


def rewrite_weights(folder, seed: int) -> None:
    """New random weights for the model in `folder` (same config, same processor)."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(AutoModel.from_pretrained(folder).config).save_pretrained(folder)


def test_a_model_reloaded_from_changed_files_misses(tiny_models, tmp_path):
    import shutil

    repository = tmp_path / "repository"
    shutil.copytree(tiny_models["dinov2"], repository / "dino")
    settings = server_settings(None, tmp_path, model_repository=repository, model_control_mode="explicit")
    image = new_image()
    with run_server(settings) as running:
        running.model = "dino"
        old = embeddings_of(infer(running, [image]))
        assert httpx.post(f"{running.url}/v2/repository/models/dino/unload").status_code == 200
        rewrite_weights(repository / "dino", seed=11)
        assert httpx.post(f"{running.url}/v2/repository/models/dino/load", timeout=120).status_code == 200
        before = stats(running)
        new = embeddings_of(infer(running, [image]))
        assert moved(before, stats(running)) == {"forwards": 1, "hits": 0, "misses": 1}
        assert not np.allclose(new, old)
