"""The embedding cache's cost and gain, through the real server on 127.0.0.1, 640x480 JPEG
photos as data URIs, each cell run against a server with the cache on (local tier, plus
Redis when `redis-server` is installed) or off, started one at a time (two side by side
disturb each other's threads).

    python -m bench.cache --model dinov2-small --seconds 8
    python -m bench.cache --model mobilenet-v2 --seconds 8

Cells: all misses (every image new) with the cache on and off, twice, alternating; all hits
(64 known images); a stream where 30% of the images are repeats of earlier ones; and the
latency of one hit against an empty request (`GET /v2/models/{name}/ready`) from one
client. Each cell reports the server's own hit and miss counts, so an "all-miss" cell that
hit would show it. Prints a markdown table; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from bench.load import run_load
from bench.models import prepare_model
from bench.redis_server import RedisServer
from bench.reports import RESULTS, write_report
from bench.run import ROOT, app_command, cpu_seconds, free_port, process

MODEL = "bench"
HOT_SET = 64
# Six different photos (bench.run's list has skimage's cat, which is chelsea again).
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "immunohistochemistry")


def photo_variants(count: int, size=(640, 480)) -> list[bytes]:
    """`count` distinct JPEGs: the benchmark photos, each copy with its number in a JPEG
    comment segment (the same pixels, so decoding costs what a photo costs; other bytes, so
    another cache key)."""
    import skimage.data
    from PIL import Image

    bases = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size).save(
            buffer, "JPEG", quality=90
        )
        bases.append(buffer.getvalue())
    out = []
    for index in range(count):
        jpeg = bases[index % len(bases)]
        comment = f"copy {index}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        out.append(jpeg[:2] + segment + jpeg[2:])  # after the start-of-image marker
    return out


def body(data: bytes) -> bytes:
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [uri]}]}
    ).encode()


@contextmanager
def redis_server(enabled: bool = True):
    """A redis-server on 127.0.0.1 (its URL), or None when it is not installed or not wanted."""
    binary = shutil.which("redis-server")
    if binary is None or not enabled:
        yield None
        return
    server = RedisServer(binary, free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


def cache_counts(base: str) -> dict:
    stats = httpx.get(f"{base}/v2/models/{MODEL}/stats").json()["model_stats"][0]
    inference = stats["inference_stats"]
    return {
        "hits": inference["cache_hit"]["count"],
        "misses": inference["cache_miss"]["count"],
        "forwards": stats["inference_count"],
    }


def cell(server: tuple[str, int], bodies: list[bytes], clients: int, seconds: float) -> dict:
    """img/s and p50 under load, and the server's CPU per image answered over the whole
    cell (warm-up included): steadier than img/s when the clients share the CPUs."""
    base, pid = server
    before, cpu = cache_counts(base), cpu_seconds(pid)
    result = run_load(f"{base}/v2/models/{MODEL}/infer", bodies, 1, clients, seconds)
    cpu, after = cpu_seconds(pid) - cpu, cache_counts(base)
    counts = {key: after[key] - before[key] for key in before}
    answered = counts["forwards"] + counts["hits"]
    return {"img_s": round(result.images_per_second, 1), "p50_ms": round(result.p50_ms, 1),
            "cpu_ms_per_image": round(1000 * cpu / max(answered, 1), 2), "errors": result.errors,
            **counts}  # fmt: skip


def sequential_p50_ms(send, count: int = 200) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        send()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50))


def cache_work_per_miss_us(redis_url: str | None, jpeg: bytes, dim: int, count: int = 2000) -> float:
    """What a miss adds, in process: hashing the image's bytes, the lookup in both tiers
    (a real Redis round trip), publishing the row (local put, the background write): this
    process's CPU time per miss, in microseconds (Redis's own CPU is not in it)."""
    import asyncio
    import hashlib

    from app.cache.embedding_cache import EmbeddingCache
    from app.embedding.backend import IMAGE
    from app.embedding.pooling import PoolingStrategy
    from app.inference.stats import ModelStatistics
    from app.metrics import ServiceMetrics
    from app.settings.server import ServerSettings

    async def run() -> float:
        settings = ServerSettings(cache_url=redis_url, cache_timeout_ms=1000)
        cache = EmbeddingCache(settings, ServiceMetrics())
        stats, row = ModelStatistics("m", "1"), np.ones((1, dim), np.float32)
        salt = os.urandom(16)  # new keys on every run: a Redis kept from an earlier run has none
        started = time.process_time()
        for index in range(count):
            digest = hashlib.sha256(jpeg + salt + index.to_bytes(4, "little")).digest()
            session = cache.session("m", "bench", IMAGE, PoolingStrategy.CLS, dim, stats)
            assert await session.consult(0, digest) is None
            session.publish([0], row)
            session.close()
        await cache.close()  # the background writes finish first
        elapsed = time.process_time() - started
        return elapsed / count * 1e6

    return asyncio.run(run())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="dinov2-small", help="mobilenet-v2, dinov2-small or a folder")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--images", type=int, default=3000, help="distinct photos made for the miss cells")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--local-only", action="store_true", help="no Redis: the in-process tier alone")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    args = parser.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    folder = prepare_model(args.model, args.cache)
    started = time.perf_counter()
    photos = [body(p) for p in photo_variants(args.images)]
    print(f"{len(photos)} distinct photos in {time.perf_counter() - started:.0f} s", flush=True)
    new = iter(photos)

    def fresh(count: int) -> list[bytes]:
        return [next(new) for _ in range(count)]

    common = ["--model-cache-dir", str(args.cache), "--max-queue-images", "4096", "--grpc-port", "0",
              "--max-batch-size", str(args.max_batch_size)]  # fmt: skip
    report: dict = {"model": args.model, "clients": args.clients, "seconds": args.seconds}
    with redis_server(enabled=not args.local_only) as redis_url:
        on_flags = [*common, "--cache-bytes", str(256 * 1024 * 1024)]
        if redis_url:
            on_flags += ["--cache-url", redis_url]
        report["shared_tier"] = bool(redis_url)
        report["runtimes"] = {}
        # 1536 floats: the larger of the two models' embeddings (DINOv2-S 384, MobileNetV2 1280).
        jpeg = photo_variants(1)[0]
        report["work_per_miss_us"] = {"local": round(cache_work_per_miss_us(None, jpeg, 1536), 1)}
        if redis_url:
            with_redis = cache_work_per_miss_us(redis_url, jpeg, 1536)
            report["work_per_miss_us"]["local_and_redis"] = round(with_redis, 1)

        @contextmanager
        def server(cache_on: bool):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            flags = on_flags if cache_on else common
            with process(app_command(folder, MODEL, port, *flags), f"{base}/v2/health/ready", env) as proc:
                platform = httpx.get(f"{base}/v2/models/{MODEL}").json()["platform"]
                report["runtimes"]["on" if cache_on else "off"] = platform
                yield base, proc.pid

        # Enough new photos for a cell: the rate times the time, with room to spare.
        per_cell = len(photos) // 6
        rounds = []
        for _ in range(2):
            with server(True) as on:
                miss_on = cell(on, fresh(per_cell), args.clients, args.seconds)
            with server(False) as off:
                miss_off = cell(off, fresh(per_cell), args.clients, args.seconds)
            rounds.append({"cache_on": miss_on, "cache_off": miss_off})
            print(json.dumps({"all_miss": rounds[-1]}), flush=True)
        report["all_miss"] = rounds

        stream, seen = [], []
        rng = random.Random(0)
        for item in fresh(per_cell):
            if seen and rng.random() < 0.3:
                stream.append(rng.choice(seen))
            stream.append(item)
            seen.append(item)
        report["repeats_30"] = {}
        with server(False) as off:
            report["repeats_30"]["cache_off"] = cell(off, stream, args.clients, args.seconds)
        with server(True) as on:
            report["repeats_30"]["cache_on"] = cell(on, stream, args.clients, args.seconds)
            print(json.dumps({"repeats_30": report["repeats_30"]}), flush=True)
            hot = fresh(HOT_SET)
            for item in hot:  # known from now on
                httpx.post(f"{on[0]}/v2/models/{MODEL}/infer", content=item, timeout=60)
            report["all_hit"] = cell(on, hot, args.clients, args.seconds)
            print(json.dumps({"all_hit": report["all_hit"]}), flush=True)
            with httpx.Client(timeout=60) as client:
                infer = f"{on[0]}/v2/models/{MODEL}/infer"
                headers = {"content-type": "application/json"}
                report["hit_p50_ms"] = sequential_p50_ms(
                    lambda: client.post(infer, content=hot[0], headers=headers)
                )
                report["empty_p50_ms"] = sequential_p50_ms(
                    lambda: client.get(f"{on[0]}/v2/models/{MODEL}/ready")
                )
    print(markdown(report))
    tiers = "local" if not report["shared_tier"] else "local-redis"
    write_report(report, RESULTS / f"cache-{args.model.replace('/', '_')}-{tiers}.json")
    return report


def markdown(report: dict) -> str:
    miss_ratios = [r["cache_on"]["img_s"] / r["cache_off"]["img_s"] for r in report["all_miss"]]
    cpu_ratios = [
        r["cache_on"]["cpu_ms_per_image"] / r["cache_off"]["cpu_ms_per_image"] for r in report["all_miss"]
    ]
    best_miss = max(r["cache_on"]["img_s"] for r in report["all_miss"])
    lines = [
        f"model {report['model']}, {report['clients']} clients, shared tier: {report['shared_tier']}, "
        f"runtimes (cache on, off): {report['runtimes']['on']}, {report['runtimes']['off']}",
        "",
        "| cell | img/s | p50 ms | server CPU ms/img | hits | misses | forwards |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [(f"all miss, round {i + 1}, cache {k.split('_')[1]}", r[k]) for i, r in
            enumerate(report["all_miss"]) for k in ("cache_on", "cache_off")]  # fmt: skip
    rows += [("all hit (64 known photos)", report["all_hit"])]
    rows += [
        (f"30% repeats, cache {k.split('_')[1]}", report["repeats_30"][k]) for k in ("cache_on", "cache_off")
    ]
    for name, c in rows:
        lines.append(
            f"| {name} | {c['img_s']} | {c['p50_ms']} | {c['cpu_ms_per_image']} | {c['hits']} "
            f"| {c['misses']} | {c['forwards']} |"
        )
    repeats = report["repeats_30"]
    lines += [
        "",
        f"- all hit / all miss (cache on): {report['all_hit']['img_s'] / best_miss:.1f}x",
        "- miss with the cache on / off, img/s: " + ", ".join(f"{r:.3f}" for r in miss_ratios),
        "- miss with the cache on / off, server CPU per image: " + ", ".join(f"{r:.3f}" for r in cpu_ratios),
        f"- 30% repeats, on / off: {repeats['cache_on']['img_s'] / repeats['cache_off']['img_s']:.2f}x",
        f"- the cache's own work per miss, in process: {report['work_per_miss_us']} us",
        f"- one hit p50 {report['hit_p50_ms']:.2f} ms, an empty request p50 {report['empty_p50_ms']:.2f} ms "
        f"(+{report['hit_p50_ms'] - report['empty_p50_ms']:.2f} ms)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
