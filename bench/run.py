"""One command to measure a model and configuration: raw forward (eager fp32 and the
server's exact configuration) in-process, then the real server on 127.0.0.1 driven with
real photos as data URIs and as URLs from a local static server.

    python -m bench.run --model mobilenet-v2 --dtype bfloat16 --compile --workers 2
    python -m bench.run --model dinov2-small --dtype bfloat16 --compile
    python -m bench.run --model dinov2-small --runtime openvino [--quantize int8]

Prints a markdown table, writes JSON to bench/results/, and stops everything it started.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import httpx

from app.cpus import usable_cpus
from bench.forward import (
    batch_one_after_decoding_ms,
    batch_one_latency_ms,
    configured,
    configured_in_workers,
    eager_fp32,
    forward_cpu_ms_per_image,
)
from bench.load import run_load
from bench.models import prepare_model
from bench.reports import RESULTS, write_report

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="mobilenet-v2",
        help="mobilenet-v2 or a bench shape (bench/models.py) or a folder",
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--runtime", choices=["auto", "torch", "openvino"], default="auto")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument(
        "--calibration", type=Path, help="int8 calibration images (default: bench/photos.py's)"
    )
    parser.add_argument(
        "--max-cosine-drop",
        type=float,
        default=0.005,
        help="QUANTIZE_MAX_COSINE_DROP (random-weight shapes: large, since their fidelity means nothing)",
    )
    parser.add_argument("--openvino-hint", choices=["auto", "throughput", "latency"], default="auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--processor", action="store_true", help="the transformers processor, not the fast path"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--sizes", default="640x480,1920x1080")
    parser.add_argument("--transports", default="data_uri,url")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--batch-request-clients", type=int, default=4, help="clients for 16-image requests")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def server_flags(args) -> list[str]:
    flags = [
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--workers",
        str(args.workers),
        "--torch-threads",
        str(args.torch_threads),
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-batch-wait-ms",
        str(args.max_batch_wait_ms),
        "--compile",
        str(args.compile).lower(),
        "--fast-preprocessing",
        str(not args.processor).lower(),
        "--max-images-per-request",
        "64",
        "--allow-private-urls",
        "true",
        "--max-queue-images",
        "4096",
        "--runtime",
        args.runtime,
        "--quantize",
        args.quantize,
        "--openvino-hint",
        args.openvino_hint,
        "--model-cache-dir",
        str(args.cache),
    ]
    if args.quantize == "int8":
        flags += [
            "--calibration-dir",
            str(args.calibration),
            "--quantize-max-cosine-drop",
            str(args.max_cosine_drop),
        ]
    if args.channels_last != "auto":
        flags += ["--channels-last", args.channels_last]
    return flags


def app_command(folder: Path, name: str, port: int, *flags: str) -> list[str]:
    """`python -m app` serving the model in `folder` as `name` on 127.0.0.1:`port`. The
    benchmarks send a few photos again and again: the embedding cache would answer them
    without the model, so it is off unless `flags` turn it on (bench.cache measures it)."""
    command = [sys.executable, "-m", "app", "--model-id", str(folder), "--model-name", name]
    return [*command, "--host", "127.0.0.1", "--port", str(port), "--cache-bytes", "0", *flags]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def process(command: list[str], ready_url: str | None, env: dict, timeout_s: float = 900):
    """A child process, ready; its output goes to a file (an unread pipe fills up and
    blocks the child mid-benchmark)."""
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while ready_url:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{command[:4]} exited: {log.read()[-2000:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} not ready after {timeout_s} s")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'640x480,1920x1080' -> [(640, 480), (1920, 1080)]."""
    return [(int(width), int(height)) for width, height in (size.split("x") for size in text.split(","))]


def photo_jpeg(name: str, width: int, height: int) -> bytes:
    """skimage's photo `name` at width x height, as a JPEG of quality 90."""
    import io

    import skimage.data
    from PIL import Image

    array = getattr(skimage.data, name)()
    image = Image.fromarray(array).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_photos(folder: Path, sizes: list[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
    names = {}
    for width, height in sizes:
        names[(width, height)] = []
        for name in PHOTOS:
            file = f"{name}-{width}x{height}.jpg"
            (folder / file).write_bytes(photo_jpeg(name, width, height))
            names[(width, height)].append(file)
    return names


def request_bodies(
    files: list[str], folder: Path, host: str, transport: str, per_request: int
) -> list[bytes]:
    def element(file):
        if transport == "url":
            return f"{host}/{file}"
        return "data:image/jpeg;base64," + base64.b64encode((folder / file).read_bytes()).decode()

    bodies = []
    for start in range(len(files)):
        images = [element(files[(start + k) % len(files)]) for k in range(per_request)]
        payload = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": images}]}
        bodies.append(json.dumps(payload).encode())
    return bodies


EAGER_BATCHES = (1, 8, 16, 32)


def measure_forward(args, folder: Path) -> dict:
    import torch

    from app.embedding.selection import load_backend
    from app.settings import Settings

    seconds = max(2.0, args.seconds / 2)
    # The reference is eager fp32 at its own best batch, whatever the server's maximum.
    eager = eager_fp32(folder, EAGER_BATCHES, seconds)
    batches = tuple(
        sorted({b for b in (1, 8, 16, 32, 64) if b <= args.max_batch_size} | {args.max_batch_size})
    )
    fields = dict(
        model_id=str(folder),
        model_dir="/nonexistent",
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        max_batch_size=args.max_batch_size,
        torch_threads=args.torch_threads,
        workers=args.workers,
        channels_last=None if args.channels_last == "auto" else args.channels_last == "true",
        runtime=args.runtime,
        quantize=args.quantize,
        calibration_dir=args.calibration,
        openvino_hint=args.openvino_hint,
        model_cache_dir=args.cache,
        quantize_max_cosine_drop=args.max_cosine_drop,
    )
    embedder = load_backend(Settings(**fields))
    if args.workers > 1:
        config = configured_in_workers(fields, args.workers, batches, seconds)
    else:
        config = configured(embedder, batches, seconds)
    best_batch = max(config, key=config.get)
    # The same forward's CPU per image (one worker: with several, the server's CPU is not one process's).
    cpu_per_image = forward_cpu_ms_per_image(embedder, best_batch, seconds) if args.workers == 1 else None
    # A lone request runs in one worker, with that worker's share of the cores.
    embedder.adopt_thread()
    latency = batch_one_latency_ms(embedder)
    width, height = parse_sizes(args.sizes)[0]
    latency_after_decoding = batch_one_after_decoding_ms(embedder, photo_jpeg(PHOTOS[0], width, height))
    torch.set_num_threads(os.cpu_count() or 1)
    del embedder
    gc.collect()
    return {
        "eager_fp32": eager,
        "configured": config,
        "eager_fp32_best": max(eager.values()),
        "configured_best": max(config.values()),
        "batch1_latency_ms": latency,
        "batch1_after_decoding_ms": latency_after_decoding,
        "forward_cpu_ms_per_image": cpu_per_image,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_statistics(base: str) -> dict:
    """The server's own inference statistics; with several workers each process counts its
    own and a reading comes from whichever answers, so main() reads them with one worker only."""
    return httpx.get(f"{base}/v2/models/bench/stats", timeout=30).json()["model_stats"][0]["inference_stats"]


def server_time_split(before: dict | None, after: dict | None) -> dict:
    """Mean time in the server per request and per forward pass between two readings: what
    the server adds to the forward, free of the client's and the network's share."""

    def mean_ms(key: str) -> float:
        if before is None or after is None:
            return float("nan")
        count = after[key]["count"] - before[key]["count"]
        return (after[key]["ns"] - before[key]["ns"]) / count / 1e6 if count else float("nan")

    return {"server_request_ms": mean_ms("success"), "server_forward_ms": mean_ms("compute_infer")}


def server_cpu_ms_per_image(before: dict | None, after: dict | None, cpu_s: float, per_request: int) -> float:
    """The server process's CPU per image answered over a cell (its warm-up included, as
    in the requests counted); nan with several workers (other processes)."""
    if before is None or after is None:
        return float("nan")
    images = (after["success"]["count"] - before["success"]["count"]) * per_request
    return 1000 * cpu_s / images if images else float("nan")


def cpu_bound_rate(server_cpu_ms: float, client_cpu_ms: float) -> float:
    """The img/s this machine's cores allow when the server and the load generator share
    them, each image costing both their CPU: a cell near it is bound by the machine."""
    return 1000 * usable_cpus() / (server_cpu_ms + client_cpu_ms)


def main(argv=None) -> dict:
    args = parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = prepare_model(args.model, args.cache)
    if args.quantize == "int8" and args.calibration is None:
        from bench.photos import write_calibration_dir

        args.calibration = write_calibration_dir(args.cache / "bench-calibration")
    print(f"model {args.model} at {folder}; server flags {' '.join(server_flags(args))}", flush=True)
    forward = measure_forward(args, folder)
    print(f"raw forward: eager fp32 {forward['eager_fp32']}, configured {forward['configured']}", flush=True)

    sizes = parse_sizes(args.sizes)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp)
        files = write_photos(photos, sizes)
        static_port, server_port = free_port(), free_port()
        static = [sys.executable, "-m", "bench.static_server", tmp, str(static_port)]
        server = app_command(folder, "bench", server_port, *server_flags(args))
        base = f"http://127.0.0.1:{server_port}"
        with (
            process(static, f"http://127.0.0.1:{static_port}/", env),
            process(server, f"{base}/v2/health/ready", env) as server_process,
        ):
            host = f"http://127.0.0.1:{static_port}"
            for size in sizes:
                for transport in args.transports.split(","):
                    plans = [(c, 1) for c in map(int, args.clients.split(","))]
                    if args.batch_request_clients:  # 0: no 16-image requests
                        plans.append((args.batch_request_clients, 16))
                    for clients, per_request in plans:
                        bodies = request_bodies(files[size], photos, host, transport, per_request)
                        # Each worker process counts its own statistics: read them with one only.
                        before = server_statistics(base) if args.workers == 1 else None
                        cpu = cpu_seconds(server_process.pid)
                        result = run_load(
                            f"{base}/v2/models/bench/infer", bodies, per_request, clients, args.seconds
                        )
                        cpu = cpu_seconds(server_process.pid) - cpu
                        after = server_statistics(base) if before else None
                        cell = {"size": f"{size[0]}x{size[1]}", "transport": transport, **asdict(result)}
                        cell.update(server_time_split(before, after))
                        cell["server_cpu_ms_per_image"] = server_cpu_ms_per_image(
                            before, after, cpu, per_request
                        )
                        cell["cpu_bound_images_per_second"] = cpu_bound_rate(
                            cell["server_cpu_ms_per_image"], result.client_cpu_ms_per_image
                        )
                        if forward["forward_cpu_ms_per_image"]:
                            cell["server_cpu_over_forward_cpu"] = (
                                cell["server_cpu_ms_per_image"] / forward["forward_cpu_ms_per_image"]
                            )
                        cell["vs_configured_forward"] = result.images_per_second / forward["configured_best"]
                        cell["vs_eager_fp32"] = result.images_per_second / forward["eager_fp32_best"]
                        cells.append(cell)
                        print(format_row(cell), flush=True)
    report = {"model": args.model, "flags": server_flags(args), "forward": forward, "cells": cells}
    print(markdown(report))
    out = (
        args.out
        or RESULTS
        / f"{args.model.replace('/', '_')}-{args.runtime}-{'int8' if args.quantize == 'int8' else args.dtype}"
        f"{'-compile' if args.compile else ''}{'-latency' if args.openvino_hint == 'latency' else ''}"
        f"-w{args.workers}.json"
    )
    print(f"wrote {write_report(report, out)}")
    return report


def format_row(cell: dict) -> str:
    ratio = cell.get("server_cpu_over_forward_cpu", float("nan"))
    return (
        f"| {cell['size']} | {cell['transport']} | {cell['clients']} | {cell['images_per_request']} "
        f"| {cell['images_per_second']:.1f} | {cell['p50_ms']:.0f} | {cell['p95_ms']:.0f} "
        f"| {cell['p99_ms']:.0f} "
        f"| {cell['vs_configured_forward']:.2f}x | {cell['vs_eager_fp32']:.2f}x "
        f"| {cell['server_request_ms']:.0f} | {cell['server_forward_ms']:.0f} "
        f"| {cell['server_cpu_ms_per_image']:.2f} ({ratio:.2f}x) "
        f"| {cell['client_cpu_ms_per_image']:.2f} | {cell['cpu_bound_images_per_second']:.0f} "
        f"| {cell['errors']} |"
    )


def markdown(report: dict) -> str:
    forward = report["forward"]
    workers = int(report["flags"][report["flags"].index("--workers") + 1])
    processes = "one process, all cores" if workers == 1 else f"{workers} processes at once, summed"
    lines = [
        f"Model `{report['model']}`, server flags `{' '.join(report['flags'])}`.",
        f"Raw forward, best batch: eager fp32 {forward['eager_fp32_best']:.1f} img/s, "
        f"this configuration {forward['configured_best']:.1f} img/s ({processes}); "
        f"batch-1 forward {forward['batch1_latency_ms']:.1f} ms back to back, "
        f"{forward['batch1_after_decoding_ms']:.1f} ms after decoding a photo as a lone request "
        "does (one worker's threads); "
        f"the forward's CPU per image {forward['forward_cpu_ms_per_image'] or float('nan'):.2f} ms.",
        "Server ms: mean time per request inside the server, and per forward pass it ran (its "
        "statistics; nan with several workers, each of which counts its own). Server CPU: the "
        "server process's CPU time per image answered, and its ratio to the forward's. Client "
        "CPU: the load generator's, on the same cores; CPU-bound img/s: what the cores allow "
        "at the server's and the client's CPU per image together (URL cells: the static image "
        "server's CPU not counted).",
        "",
        "| photo | sent as | clients | images/request | img/s | p50 ms | p95 ms | p99 ms "
        "| vs configured forward | vs eager fp32 | server ms/request | server ms/forward "
        "| server CPU ms/img | client CPU ms/img | CPU-bound img/s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(format_row(cell) for cell in report["cells"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
