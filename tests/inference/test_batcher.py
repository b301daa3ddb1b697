"""Dynamic batching: shared forward passes give every request exactly its own answer."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from app.cpus import usable_cpus
from app.embedding.backend import ExecutionTiming, PoolRequest
from app.embedding.pooling import PoolingStrategy
from app.embedding.torch_backend import is_out_of_memory
from app.inference.batcher import DynamicBatcher
from tests.support import data_uri, embeddings_of, encode, image_request, photo, run_server, server_settings

NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera")


@pytest.fixture(scope="module")
def files():
    return [data_uri(encode(photo(name).resize((160, 120)))) for name in NAMES]


@pytest.fixture(scope="module", params=["torch", "openvino"])
def server(request, tiny_models, tmp_path_factory):
    """Both runtimes: OpenVINO runs several batches at once (one per infer request)."""
    folder = tmp_path_factory.mktemp("srv")
    settings = server_settings(
        tiny_models["dinov2_with_registers"],
        folder,
        max_batch_size=8,
        max_batch_wait_ms=50,
        runtime=request.param,
        model_cache_dir=folder / "cache",
        cache_bytes=0,  # the photos repeat: with the cache, most would never reach the batcher
    )
    with run_server(settings) as running:
        concurrent = running.served.backend.concurrent_batches
        assert concurrent == 1 if request.param == "torch" else concurrent >= min(2, usable_cpus())
        yield running


def _requests(files):
    """Requests of different sizes, poolings and normalisation."""
    plans = []
    for i in range(12):
        count = 1 + i % 4
        images = [files[(i + k) % len(files)] for k in range(count)]
        plans.append(
            image_request(
                images, pooling_strategy=("cls", "mean", "max")[i % 3], normalize=("true", "false")[i % 2]
            )
        )
    return plans


def test_concurrent_requests_get_what_they_get_alone(server, files):
    plans = _requests(files)
    alone = [embeddings_of(httpx.post(server.infer_url(), json=p, timeout=60)) for p in plans]
    batcher = server.served.batcher
    sizes_before = len(batcher.batch_sizes)
    with ThreadPoolExecutor(len(plans)) as pool:
        together = list(pool.map(lambda p: httpx.post(server.infer_url(), json=p, timeout=60), plans))
    for response, expected in zip(together, alone, strict=True):
        assert response.status_code == 200, response.text
        torch.testing.assert_close(
            torch.from_numpy(embeddings_of(response)), torch.from_numpy(expected), atol=1e-5, rtol=0
        )
    sizes = list(batcher.batch_sizes)[sizes_before:]
    assert max(sizes) <= 8
    assert len(sizes) < len(plans)  # forward passes were shared
    assert sum(sizes) == sum(len(p["inputs"][0]["data"]) for p in plans)


def test_a_failing_image_does_not_touch_its_neighbours(server, files):
    plans = _requests(files)[:6]
    bad = image_request([files[0], "data:image/jpeg;base64,AAAA"])
    with ThreadPoolExecutor(7) as pool:
        bad_future = pool.submit(httpx.post, server.infer_url(), json=bad, timeout=60)
        good = list(pool.map(lambda p: httpx.post(server.infer_url(), json=p, timeout=60), plans))
    assert bad_future.result().status_code == 400 and "element 1" in bad_future.result().json()["error"]
    for response, plan in zip(good, plans, strict=True):
        alone = httpx.post(server.infer_url(), json=plan, timeout=60)
        np.testing.assert_allclose(embeddings_of(response), embeddings_of(alone), atol=1e-5)


class _Recorder:
    """A run_batch that records its batches and answers each request with its row indices."""

    def __init__(self, fail_on: float | None = None):
        self.batches: list[int] = []
        self.fail_on = fail_on

    def __call__(self, pixels, requests):
        self.batches.append(pixels.shape[0])
        if self.fail_on is not None and bool((pixels == self.fail_on).any()):
            raise RuntimeError("this input breaks the model")
        results, row = [], 0
        for request in requests:
            results.append(pixels[row : row + request.count, 0, 0, :1].copy())
            row += request.count
        return results, ExecutionTiming(pixels.shape[0], 0, 0, 0)


def _pixels(value: float, count: int) -> np.ndarray:
    return np.full((count, 3, 2, 2), value, np.float32)


def _run(batcher, jobs):
    async def go():
        batcher.start()
        try:
            return await asyncio.gather(
                *(
                    batcher.submit(_pixels(v, n), PoolRequest(n, PoolingStrategy.MEAN, False))
                    for v, n in jobs
                ),
                return_exceptions=True,
            )
        finally:
            batcher.stop()

    return asyncio.run(go())


def test_batches_never_exceed_the_maximum():
    recorder = _Recorder()
    jobs = [(float(i), 1 + i % 5) for i in range(30)]
    results = _run(DynamicBatcher(recorder, max_batch=6, max_wait_s=0.05), jobs)
    assert max(recorder.batches) <= 6
    assert sum(recorder.batches) == sum(n for _, n in jobs)
    for (value, count), result in zip(jobs, results, strict=True):
        assert result.shape == (count, 1) and (result == value).all()  # each got its own rows


def test_a_request_larger_than_a_batch_is_split():
    recorder = _Recorder()
    [result] = _run(DynamicBatcher(recorder, max_batch=4, max_wait_s=0), [(7.0, 10)])
    assert recorder.batches == [4, 4, 2] and result.shape == (10, 1)


def test_a_model_failure_fails_only_its_own_request():
    recorder = _Recorder(fail_on=3.0)
    results = _run(DynamicBatcher(recorder, max_batch=16, max_wait_s=0.05), [(1.0, 2), (3.0, 1), (5.0, 2)])
    assert isinstance(results[1], RuntimeError)
    assert (results[0] == 1.0).all() and (results[2] == 5.0).all()


def test_a_lone_request_waits_at_most_the_maximum_wait():
    for more_expected, bound in ((lambda: True, 0.3), (lambda: False, 0.0)):
        recorder = _Recorder()
        batcher = DynamicBatcher(recorder, max_batch=8, max_wait_s=0.3, more_expected=more_expected)
        started = time.monotonic()
        _run(batcher, [(1.0, 1)])
        # Generous slack for a loaded machine; the point is that it does not wait for a full batch.
        assert time.monotonic() - started < bound + 0.5
        assert recorder.batches == [1]


def test_out_of_memory_is_retried_in_smaller_pieces():
    class SmallMemory(_Recorder):
        def __call__(self, pixels, requests):
            if pixels.shape[0] > 2:
                self.batches.append(pixels.shape[0])
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().__call__(pixels, requests)

    recorder = SmallMemory()
    # The torch backend tells which exceptions mean out of memory.
    [result] = _run(
        DynamicBatcher(recorder, max_batch=8, max_wait_s=0, is_out_of_memory=is_out_of_memory), [(4.0, 7)]
    )
    assert result.shape == (7, 1) and (result == 4.0).all()
    # 7 fails, then halves: 3 fails (1 + 2 pass), 4 fails (2 + 2 pass); never 7 again.
    assert recorder.batches == [7, 3, 1, 2, 4, 2, 2]


def test_concurrent_batches_overlap_and_each_request_gets_its_own_rows():
    import threading

    running, most = 0, 0
    lock = threading.Lock()
    recorder = _Recorder()

    def slow(pixels, requests):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return recorder(pixels, requests)

    jobs = [(float(i), 1 + i % 3) for i in range(12)]
    results = _run(DynamicBatcher(slow, max_batch=4, max_wait_s=0, concurrency=2), jobs)
    assert most == 2  # two batches computed at once, never more
    for (value, count), result in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(result, np.full((count, 1), value, np.float32))


def test_main_thread_host_runs_the_model_loop_in_the_serving_thread():
    import threading

    from app.inference.model_thread import MainThreadHost

    host, keep_going, seen = MainThreadHost(), threading.Event(), []
    recorder = _Recorder()
    batcher = DynamicBatcher(
        recorder, max_batch=4, max_wait_s=0, on_thread_start=lambda: seen.append(threading.current_thread())
    )
    host.host(batcher)
    assert batcher.alive  # alive as soon as it is handed over
    results = []

    def client():
        async def go():
            return await batcher.submit(_pixels(2.0, 3), PoolRequest(3, PoolingStrategy.MEAN, False))

        results.append(asyncio.run(go()))
        batcher.stop()
        keep_going.clear()

    keep_going.set()
    threading.Thread(target=client).start()
    host.serve(keep_going, poll_s=0.05)  # returns once the client is done
    assert seen == [threading.current_thread()] and (results[0] == 2.0).all()
    assert not batcher.alive


def test_loading_runs_in_a_thread_that_has_ended_when_it_returns():
    import threading

    from app.inference.model_thread import run_in_passing_thread

    ran_in = []

    def load():
        ran_in.append(threading.current_thread())
        return torch.ones(256, 256).sum().item()  # a torch op, as loading and warm-up run

    def broken():
        raise ValueError("no such model")

    async def go():
        assert await run_in_passing_thread(load) == 65536.0
        assert ran_in[0] is not threading.current_thread() and not ran_in[0].is_alive()
        with pytest.raises(ValueError, match="no such model"):
            await run_in_passing_thread(broken)

    asyncio.run(go())
