"""Closed-loop load: N clients, each sending its next request when the last one returns."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import numpy as np


@dataclass
class LoadResult:
    clients: int
    images_per_request: int
    requests: int
    errors: int
    images_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_samples: list[str]
    # The load generator's own CPU per image answered (its event loop thread, which runs
    # every client): on one machine it is taken from the server's cores.
    client_cpu_ms_per_image: float


async def _drive(
    url: str, bodies: list[bytes], images_per_request: int, clients: int, seconds: float, warmup_s: float
):
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    answered_images = 0  # every 200, warm-up and window edges included: what the CPU paid for
    cpu_started = time.thread_time()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + seconds
        completed_images = 0

        async def one_client(offset: int):
            nonlocal errors, completed_images, answered_images
            i = offset
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                response = await client.post(
                    url, content=bodies[i % len(bodies)], headers={"content-type": "application/json"}
                )
                done = time.perf_counter()
                i += clients
                if response.status_code == 200:
                    answered_images += images_per_request
                # Throughput counts what completes inside the window, whenever it was sent:
                # counting only requests sent inside it undercounts long-latency cells.
                if not measure_from <= done <= stop_at:
                    continue
                if response.status_code != 200:
                    errors += 1
                    if len(samples) < 3:
                        samples.append(f"{response.status_code} {response.text[:200]}")
                    continue
                latencies.append(done - sent)
                completed_images += images_per_request

        await asyncio.gather(*(one_client(k) for k in range(clients)))
        elapsed = stop_at - measure_from
    client_cpu_ms = (
        1000 * (time.thread_time() - cpu_started) / answered_images if answered_images else float("nan")
    )
    return latencies, errors, completed_images / elapsed, samples, client_cpu_ms


def run_load(url, bodies, images_per_request, clients, seconds, warmup_s=1.5) -> LoadResult:
    latencies, errors, rate, samples, client_cpu_ms = asyncio.run(
        _drive(url, bodies, images_per_request, clients, seconds, warmup_s)
    )
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    return LoadResult(
        clients=clients,
        images_per_request=images_per_request,
        requests=len(latencies),
        errors=errors,
        images_per_second=rate,
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
        error_samples=samples,
        client_cpu_ms_per_image=client_cpu_ms,
    )
