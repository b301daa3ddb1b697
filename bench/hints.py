"""OpenVINO's hints through the server, alternated in rounds (a shared machine's speed moves
more between runs than the hints differ): per round and hint, a fresh server; N closed-loop
clients x 1 photo as data URIs, then one client alone; img/s, p50 and the server's CPU per
image. Prints a table per round and, per hint, the median over rounds and its ratio to the
first hint's in the same round.

    python -m bench.hints --model dinov2-small --hints latency,throughput --rounds 4

Every other setting is the server's default but the runtime (openvino) and MAX_BATCH_SIZE
(8: what RUNTIME=auto chooses on 2 cores; --max-batch-size to change it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from app.settings.model import OpenVinoHint
from bench.load import run_load
from bench.models import prepare_model
from bench.reports import RESULTS, write_report
from bench.run import (
    ROOT,
    app_command,
    cpu_seconds,
    free_port,
    parse_sizes,
    process,
    request_bodies,
    server_cpu_ms_per_image,
    server_statistics,
    write_photos,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bench.hints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="mobilenet-v2", help="mobilenet-v2, a bench shape or a folder")
    parser.add_argument("--hints", default="latency,throughput")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8, help="per cell")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.hints = args.hints.split(",")
    for hint in args.hints:
        if hint not in {h.value for h in OpenVinoHint} - {"auto"}:
            parser.error(f"unknown hint {hint!r}")
    return args


def measure(args, folder: Path, hint: str, bodies: list[bytes]) -> dict:
    """One fresh server with `hint`: the loaded cell, then the lone client."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    port = free_port()
    flags = ["--runtime", "openvino", "--openvino-hint", hint, "--max-batch-size", str(args.max_batch_size)]
    command = app_command(folder, "bench", port, *flags, "--model-cache-dir", str(args.cache))
    base = f"http://127.0.0.1:{port}"
    row: dict = {"hint": hint}
    with process(command, f"{base}/v2/health/ready", env) as server:
        for name, clients in (("loaded", args.clients), ("lone", 1)):
            before, cpu = server_statistics(base), cpu_seconds(server.pid)
            result = run_load(f"{base}/v2/models/bench/infer", bodies, 1, clients, args.seconds)
            cpu, after = cpu_seconds(server.pid) - cpu, server_statistics(base)
            row[name] = {
                "images_per_second": result.images_per_second,
                "p50_ms": result.p50_ms,
                "p95_ms": result.p95_ms,
                "errors": result.errors,
                "server_cpu_ms_per_image": server_cpu_ms_per_image(before, after, cpu, 1),
                "client_cpu_ms_per_image": result.client_cpu_ms_per_image,
            }
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = prepare_model(args.model, args.cache)
    [size] = parse_sizes(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = request_bodies(write_photos(Path(tmp), [size])[size], Path(tmp), "", "data_uri", 1)
    rounds = []
    for number in range(1, args.rounds + 1):
        rows = [measure(args, folder, hint, bodies) for hint in args.hints]
        rounds.append(rows)
        print(f"\nround {number}\n" + table(rows, args.clients), flush=True)
    summary = summarise(rounds, args.hints)
    print(
        "\nmedian over rounds (ratio to the first hint's in the same round)\n" + summary_table(summary, args)
    )
    report = {
        "model": args.model,
        "clients": args.clients,
        "size": args.size,
        "rounds": rounds,
        "summary": summary,
    }
    print(f"wrote {write_report(report, args.out or RESULTS / f'hints-{Path(args.model).name}.json')}")
    return report


def table(rows: list[dict], clients: int) -> str:
    lines = [
        f"| hint | {clients} clients img/s | p50 ms | server CPU ms/img | client CPU ms/img "
        "| lone p50 ms | lone p95 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        loaded, lone = row["loaded"], row["lone"]
        lines.append(
            f"| {row['hint']} | {loaded['images_per_second']:.1f} | {loaded['p50_ms']:.0f} | "
            f"{loaded['server_cpu_ms_per_image']:.2f} | {loaded['client_cpu_ms_per_image']:.2f} | "
            f"{lone['p50_ms']:.1f} | {lone['p95_ms']:.1f} | "
            f"{loaded['errors'] + lone['errors']} |"
        )
    return "\n".join(lines)


def summarise(rounds: list[list[dict]], hints: list[str]) -> dict:
    """Per hint: the median img/s, server CPU per image and lone p50 over the rounds, and
    the median of its per-round ratios to the first hint's (each ratio from one round)."""
    summary = {}
    for index, hint in enumerate(hints):
        rate = [r[index]["loaded"]["images_per_second"] for r in rounds]
        lone = [r[index]["lone"]["p50_ms"] for r in rounds]
        rate_ratio = [
            r[index]["loaded"]["images_per_second"] / r[0]["loaded"]["images_per_second"] for r in rounds
        ]
        lone_ratio = [r[index]["lone"]["p50_ms"] / r[0]["lone"]["p50_ms"] for r in rounds]
        cpu = [r[index]["loaded"]["server_cpu_ms_per_image"] for r in rounds]
        summary[hint] = {
            "server_cpu_ms_per_image": statistics.median(cpu),
            "images_per_second": statistics.median(rate),
            "images_per_second_ratio": statistics.median(rate_ratio),
            "lone_p50_ms": statistics.median(lone),
            "lone_p50_ratio": statistics.median(lone_ratio),
        }
    return summary


def summary_table(summary: dict, args) -> str:
    lines = [
        f"| hint | {args.clients} clients img/s (x) | server CPU ms/img | lone p50 ms (x) |",
        "|---|---|---|---|",
    ]
    for hint, s in summary.items():
        lines.append(
            f"| {hint} | {s['images_per_second']:.1f} ({s['images_per_second_ratio']:.2f}x) | "
            f"{s['server_cpu_ms_per_image']:.2f} | "
            f"{s['lone_p50_ms']:.1f} ({s['lone_p50_ratio']:.2f}x) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
