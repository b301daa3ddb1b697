"""The shared tier (CACHE_URL) with a real redis-server: another replica reads one's work;
changed model files, another precision or a damaged entry are misses; a cache that dies or
hangs costs requests nothing but a short timeout, and is used again once it is back."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from tests.cache.images import new_image
from tests.cache.redis_server import new_redis_server
from tests.cache.test_serving import infer, moved, rewrite_weights, stats
from tests.support import (
    LOOPBACK,
    app_process,
    embeddings_of,
    metric,
    run_server,
    scrape,
    server_settings,
)


def cached_server(model, tmp_path, redis_url: str, **overrides):
    fields = dict(model_name="shared", cache_url=redis_url, cache_timeout_ms=2000) | overrides
    return run_server(server_settings(model, tmp_path, **fields))


def test_a_second_replica_gets_the_first_ones_work(tiny_models, redis, tmp_path):
    image = new_image()
    with cached_server(tiny_models["dinov2"], tmp_path, redis.url) as first:
        computed = infer(first, [image])
    flags = ("--model-name", "shared", "--cache-url", redis.url, "--cache-timeout-ms", "2000")
    with app_process(tiny_models["dinov2"], tmp_path, *flags) as second:
        second.model = "shared"
        second.infer_url = lambda: f"{second.url}/v2/models/shared/infer"
        before = stats(second)
        answer = infer(second, [image])
        assert moved(before, stats(second)) == {"forwards": 0, "hits": 1, "misses": 0}
        assert answer.content == computed.content
        assert metric(scrape(second), "embed_cache_hits_total", model="shared", tier="shared") == 1


def test_changed_model_files_never_answer_from_old_entries(tiny_models, redis, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["dinov2"], folder)
    image = new_image()
    with cached_server(folder, tmp_path, redis.url) as server:
        old = embeddings_of(infer(server, [image]))
    with cached_server(folder, tmp_path, redis.url) as server:  # the same files: the shared entry
        before = stats(server)
        assert embeddings_of(infer(server, [image])).tobytes() == old.tobytes()
        assert moved(before, stats(server))["hits"] == 1
    rewrite_weights(folder, seed=7)
    with cached_server(folder, tmp_path, redis.url) as server:
        before = stats(server)
        new = embeddings_of(infer(server, [image]))
        assert moved(before, stats(server)) == {"forwards": 1, "hits": 0, "misses": 1}
        assert new.tobytes() == embeddings_of(infer(server, [image], cache=False)).tobytes()
        assert not np.allclose(new, old)


def test_int8_and_float32_of_one_model_keep_their_own_entries(tiny_models, redis, tmp_path):
    from bench.photos import write_calibration_dir

    image = new_image()
    common = dict(runtime="openvino", model_cache_dir=tmp_path / "exports")
    with cached_server(tiny_models["dinov2"], tmp_path, redis.url, **common) as server:
        float32 = embeddings_of(infer(server, [image]))
    calibration = write_calibration_dir(tmp_path / "calibration", count=16)
    int8 = dict(common, quantize="int8", calibration_dir=calibration, quantize_min_neighbours_kept=0)
    with cached_server(tiny_models["dinov2"], tmp_path, redis.url, **int8) as server:
        before = stats(server)
        quantized = embeddings_of(infer(server, [image]))
        assert moved(before, stats(server)) == {"forwards": 1, "hits": 0, "misses": 1}
        assert quantized.tobytes() != float32.tobytes()
        assert quantized.tobytes() == embeddings_of(infer(server, [image], cache=False)).tobytes()


def test_a_damaged_shared_entry_is_a_miss(tiny_models, redis, tmp_path):
    """Wrong length, wrong header, another dimension, NaN values: each a miss, and the
    answer is the model's own."""
    client = redis.client()
    with cached_server(tiny_models["dinov2"], tmp_path, redis.url, cache_bytes=0) as server:
        for damage in (
            lambda v: v[:-4],
            lambda v: b"XXXX" + v[4:],
            lambda v: v[:4] + (31).to_bytes(4, "little") + v[8:-4],
            lambda v: v[:8] + np.full((len(v) - 8) // 4, np.nan, "<f4").tobytes(),
            lambda v: v + b"\0" * 4096,
        ):
            client.flushall()
            image = new_image()
            right = embeddings_of(infer(server, [image]))  # stored in Redis only (CACHE_BYTES=0)
            deadline = time.monotonic() + 30
            while not client.keys() and time.monotonic() < deadline:  # written in the background
                time.sleep(0.05)
            (key,) = client.keys()
            client.set(key, damage(client.get(key)))
            before = stats(server)
            assert embeddings_of(infer(server, [image])).tobytes() == right.tobytes()
            assert moved(before, stats(server)) == {"forwards": 1, "hits": 0, "misses": 1}
    client.close()


def _slowest_of(server, count: int) -> float:
    slowest = 0.0
    for _ in range(count):
        started = time.perf_counter()
        infer(server, [new_image()])
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def test_redis_killed_mid_run_then_back(tiny_models, tmp_path, caplog):
    redis = new_redis_server()
    redis.start()
    try:
        with (
            caplog.at_level(logging.INFO, logger="app.cache.shared"),
            cached_server(tiny_models["dinov2"], tmp_path, redis.url, cache_timeout_ms=50) as server,
        ):
            infer(server, [new_image()])
            redis.kill()
            before = scrape(server)
            # Every request is served, none waits on the dead cache for long.
            assert _slowest_of(server, 20) < 2.0
            after = scrape(server)
            assert metric(after, "embed_cache_shared_errors_total", model="shared") > metric(
                before, "embed_cache_shared_errors_total", model="shared"
            )
            assert metric(after, "embed_cache_shared_up") == 0
            down = [r for r in caplog.records if "is down" in r.getMessage()]
            assert len(down) == 1 and "redis://127.0.0.1:" in down[0].getMessage()

            redis.start()  # the same port
            client = redis.client()
            deadline = time.monotonic() + 30
            while client.dbsize() == 0 and time.monotonic() < deadline:
                infer(server, [new_image()])
                time.sleep(0.2)
            assert client.dbsize() > 0
            assert metric(scrape(server), "embed_cache_shared_up") == 1
            assert any("is back" in r.getMessage() for r in caplog.records)
            client.close()
    finally:
        redis.kill()


@pytest.fixture
def silent_cache_server():
    """A TCP server that accepts connections and never answers: a cache that hangs."""
    listener = socket.create_server((LOOPBACK, 0))
    connections: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connections.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://{LOOPBACK}:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for connection in connections:
        connection.close()
    listener.close()


def test_a_hung_cache_costs_at_most_its_timeout(tiny_models, tmp_path, silent_cache_server):
    with cached_server(tiny_models["dinov2"], tmp_path, silent_cache_server, cache_timeout_ms=50) as server:
        image = new_image()
        first = embeddings_of(infer(server, [image]))
        assert _slowest_of(server, 10) < 2.0
        assert embeddings_of(infer(server, [image])).tobytes() == first.tobytes()  # the local tier
        samples = scrape(server)
        assert metric(samples, "embed_cache_shared_errors_total", model="shared") >= 3
        assert metric(samples, "embed_cache_shared_up") == 0


def test_a_request_cancelled_during_its_lookups_leaves_nothing_to_wait_on(silent_cache_server):
    """A request whose deadline passes while the shared cache hangs: the inputs it had
    claimed are released, so the next request for them computes instead of waiting."""
    import asyncio

    from app.cache.embedding_cache import EmbeddingCache
    from app.embedding.backend import TEXT
    from app.embedding.pooling import PoolingStrategy
    from app.inference.stats import ModelStatistics
    from app.metrics import ServiceMetrics
    from app.settings.server import ServerSettings

    async def scenario():
        settings = ServerSettings(cache_url=silent_cache_server, cache_timeout_ms=5000)
        cache = EmbeddingCache(settings, ServiceMetrics())
        stats = ModelStatistics("m", "1")

        def session():
            return cache.session("m", "identity", TEXT, PoolingStrategy.CLS, 4, stats)

        async def request() -> None:  # as ServedModel uses a session
            with session() as claiming:
                await claiming.consult_all([b"\x01" * 32, b"\x02" * 32])

        lookup = asyncio.create_task(request())
        await asyncio.sleep(0.2)  # both claimed, both waiting on the silent server
        lookup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lookup
        assert not cache._in_flight
        cache.shared = None  # the next request: local tier only
        assert await session().consult(0, b"\x01" * 32) is None  # its own to compute, not a wait

    asyncio.run(scenario())
