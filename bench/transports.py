"""V2 gRPC vs V2 REST with binary tensor data, same server, same photos: images per second
and median latency at N closed-loop clients x 1 photo each, alternating the transports
(this machine's noise is larger than one run's differences).

    python -m bench.transports [--model mobilenet-v2] [--clients 16] [--seconds 8] [--rounds 2]

Both sides use the tritonclient aio clients (aiohttp for REST, one grpc.aio channel for
gRPC), the photo's JPEG bytes as a BYTES element, binary data both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.models import prepare_model
from bench.reports import RESULTS, write_report
from bench.run import app_command, free_port, parse_sizes, process, write_photos

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench"


REQUEST_TIMEOUT_S = 30


async def closed_loop(make_client, build, photos: list[bytes], clients: int, seconds: float, warmup_s=1.5):
    """`clients` clients, each sending one photo at a time (`build(photo)` gives the call's
    model, inputs and outputs) and the next once answered; img/s and p50 in the window."""
    client = make_client()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

    async def one(offset: int):
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at:
            model, inputs, outputs = build(photos[i % len(photos)])
            sent = time.perf_counter()
            try:
                # Bounded: a server that never answers (seen: PyTriton with two model
                # instances on a 2-vCPU host) counts errors instead of holding the run.
                await asyncio.wait_for(client.infer(model, inputs, outputs=outputs), REQUEST_TIMEOUT_S)
                ok = True
            except Exception:  # noqa: BLE001 - counted, the load goes on
                ok = False
            done = time.perf_counter()
            i += clients
            if measure_from <= done <= stop_at:
                if ok:
                    latencies.append(done - sent)
                else:
                    errors += 1

    try:
        await asyncio.gather(*(one(k) for k in range(clients)))
    finally:
        await client.close()
    return {
        "images_per_second": len(latencies) / seconds,
        "p50_ms": float(np.percentile(np.asarray(latencies) * 1000, 50)) if latencies else float("nan"),
        "errors": errors,
    }


def this_server_call(module, binary: bool):
    """This server's V2 call for one photo: input `image` [1], its JSON output."""

    def build(photo: bytes):
        tensor = module.InferInput("image", [1], "BYTES")
        if binary:
            tensor.set_data_from_numpy(np.array([photo], dtype=np.object_), binary_data=True)
            return MODEL, [tensor], [module.InferRequestedOutput("output", binary_data=True)]
        tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
        return MODEL, [tensor], [module.InferRequestedOutput("output")]

    return build


def measure(transport: str, http_target: str, grpc_target: str, photos, clients: int, seconds: float) -> dict:
    if transport == "rest":
        import tritonclient.http.aio as module

        def make():
            return module.InferenceServerClient(http_target, conn_limit=clients)

        build = this_server_call(module, binary=True)
    else:
        import tritonclient.grpc.aio as module

        def make():
            return module.InferenceServerClient(grpc_target)

        build = this_server_call(module, binary=False)
    return asyncio.run(closed_loop(make, build, photos, clients, seconds))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet-v2")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed-bench")
    parser.add_argument("--out", type=Path, default=RESULTS / "transports.json")
    args = parser.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    folder = prepare_model(args.model, args.cache)
    [size] = parse_sizes(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_photos(Path(tmp), [size])[size]
        photos = [(Path(tmp) / name).read_bytes() for name in names]
    port, grpc_port = free_port(), free_port()
    server = app_command(
        folder,
        MODEL,
        port,
        "--grpc-port",
        str(grpc_port),
        "--model-cache-dir",
        str(args.cache),
        "--max-queue-images",
        "4096",
    )
    rounds = []
    with process(server, f"http://127.0.0.1:{port}/v2/health/ready", env):
        for round_ in range(args.rounds):
            for transport in ("rest", "grpc"):
                result = measure(
                    transport,
                    f"127.0.0.1:{port}",
                    f"127.0.0.1:{grpc_port}",
                    photos,
                    args.clients,
                    args.seconds,
                )
                rounds.append({"round": round_ + 1, "transport": transport, **result})
                print(json.dumps(rounds[-1]), flush=True)
    report = {"model": args.model, "size": args.size, "clients": args.clients, "rounds": rounds}
    for transport in ("rest", "grpc"):
        mine = [r for r in rounds if r["transport"] == transport]
        report[transport] = {
            "images_per_second": [round(r["images_per_second"], 1) for r in mine],
            "p50_ms": [round(r["p50_ms"], 1) for r in mine],
        }
    report["grpc_over_rest"] = [
        round(g["images_per_second"] / r["images_per_second"], 2)
        for r, g in zip(rounds[0::2], rounds[1::2], strict=True)
    ]
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=1))
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
