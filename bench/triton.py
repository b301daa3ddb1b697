"""This server against NVIDIA Triton serving the same OpenVINO model files (PyTriton, dynamic
batching), both over V2 gRPC with tritonclient's aio client and the same 640x480 JPEGs:
images per second at N closed-loop clients x 1 photo, and a lone client's median latency.
Triton gets the best of a few configurations (model instances x OpenVINO hint); this server
runs with its defaults (RUNTIME=auto).

    python -m bench.triton [--model mobilenet-v2] [--clients 16] [--seconds 8]

PyTriton goes into a venv of its own (bench/.triton-venv, made on the first run from PyPI):
it pins its own dependencies, which must not touch the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.models import prepare_model
from bench.reports import RESULTS, write_report
from bench.run import app_command, free_port, process, write_photos
from bench.transports import MODEL, closed_loop, this_server_call

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / ".triton-venv"
PYTRITON = ["nvidia-pytriton==0.7.0", "openvino==2026.4.1", "pillow"]
# (model instances, OpenVINO hint, dynamic batcher's longest wait in µs)
TRITON_CONFIGS = [(1, "latency", 0), (1, "throughput", 0), (2, "latency", 0), (2, "throughput", 500)]


def triton_python(base: str) -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PYTRITON], check=True)
    return python


def export_folder(model: Path, cache: Path) -> Path:
    """The OpenVINO float32 export this server makes of `model` (the files Triton serves)."""
    from app.embedding.model_source import resolve_source
    from app.embedding.openvino_export import ensure_export
    from app.settings.model import ModelSettings

    settings = ModelSettings(
        model_id=str(model), model_dir="/nonexistent", model_cache_dir=cache, runtime="openvino"
    )
    folder, _ = ensure_export(settings, resolve_source(settings))
    return folder


def triton_call(module):
    def build(photo: bytes):
        tensor = module.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[photo]], dtype=np.object_))
        return MODEL, [tensor], [module.InferRequestedOutput("embedding")]

    return build


def measure(target: str, build_for, photos: list[bytes], clients: int, seconds: float) -> dict:
    import tritonclient.grpc.aio as module

    def make():
        return module.InferenceServerClient(target)

    load = asyncio.run(closed_loop(make, build_for(module), photos, clients, seconds))
    lone = asyncio.run(closed_loop(make, build_for(module), photos, 1, seconds / 2))
    return {
        "images_per_second": round(load["images_per_second"], 1),
        "p50_ms": round(load["p50_ms"], 1),
        "lone_p50_ms": round(lone["p50_ms"], 2),
        "errors": load["errors"] + lone["errors"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet-v2")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed-bench")
    parser.add_argument("--out", type=Path, default=None)
    # Triton's Python backend stub loads the system's libpython: a venv of another build of
    # the same version (pyenv's 3.11.7 on Debian's 3.11.2) mixes two runtimes and fails.
    parser.add_argument(
        "--python", default="/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    )
    args = parser.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    folder = prepare_model(args.model, args.cache)
    export = export_folder(folder, args.cache)
    python = triton_python(args.python)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_photos(Path(tmp), [(640, 480)])[(640, 480)]
        photos = [(Path(tmp) / name).read_bytes() for name in names]
    results: dict[str, dict] = {"triton": {}}
    for instances, hint, delay in TRITON_CONFIGS:
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        command = [str(python), str(ROOT / "bench" / "triton_server.py"), str(export)]
        command += [str(grpc_port), str(http_port), str(metrics_port), hint, str(instances), str(delay)]
        with process(command, f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", env):
            result = measure(f"127.0.0.1:{grpc_port}", triton_call, photos, args.clients, args.seconds)
        name = f"{instances} instance(s), hint {hint}, delay {delay} us"
        results["triton"][name] = result
        print(json.dumps({"triton": name, **result}), flush=True)
    port, grpc_port = free_port(), free_port()
    server = app_command(
        folder, MODEL, port, "--grpc-port", str(grpc_port), "--model-cache-dir", str(args.cache)
    )
    server += ["--max-queue-images", "4096"]
    with process(server, f"http://127.0.0.1:{port}/v2/health/ready", env):
        results["this_server"] = measure(
            f"127.0.0.1:{grpc_port}",
            lambda module: this_server_call(module, binary=False),
            photos,
            args.clients,
            args.seconds,
        )
    print(json.dumps({"this_server": results["this_server"]}), flush=True)
    best = max(results["triton"].values(), key=lambda r: r["images_per_second"])
    fastest_lone = min(r["lone_p50_ms"] for r in results["triton"].values())
    results["ratios"] = {
        "img_s_over_triton_best": round(
            results["this_server"]["images_per_second"] / best["images_per_second"], 2
        ),
        "lone_p50_ms": [results["this_server"]["lone_p50_ms"], fastest_lone],
    }
    print(json.dumps(results["ratios"]))
    write_report(
        {"model": args.model, "clients": args.clients, **results},
        args.out or RESULTS / f"triton-{args.model}.json",
    )
    return results


if __name__ == "__main__":
    main()
