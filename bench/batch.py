"""`python -m app.batch` against its in-process ceiling and the bulk client, in one run.

    python -m bench.batch --model mobilenet-v2 --runtime torch --count 600 --sizes 640x480,4000x3000

For each photo size (`--count` distinct JPEGs of it, written once to --photos):
- ceiling: the same backend in one process, decoding in a thread per core with the
  pipeline's own `image_pixels`, forward passes of MAX_BATCH_SIZE on the main thread;
- pipeline: `python -m app.batch` on a Ray started on this machine (--pipeline-flags);
- client: `python -m app.client` against one `python -m app` on 127.0.0.1, same model and
  runtime (its cache off: every image computed).
Each rate is images / seconds as the tool reports it, from its first image to its last: the
pipeline's includes its actors' start-up (Ray itself and the driver's model check are
before it; the whole command's wall time is beside). The pipeline also runs on a third of
the photos first: (N - N/3) / (t(N) - t(N/3)) is its steady rate, start-up taken out. Peak
memory is the largest sum of PSS over the process tree (the server's and the client's
together), sampled every 0.25 s. Writes JSON to bench/results/batch-<model>-<runtime>-<sizes>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bench.models import prepare_model
from bench.photos import PHOTOS
from bench.reports import RESULTS, write_report
from bench.run import ROOT, app_command, free_port, parse_sizes, process

RATE = re.compile(r"(\d+) embedded in ([\d.]+) s")


def write_distinct_photos(folder: Path, size: tuple[int, int], count: int) -> Path:
    """`count` JPEGs of `size`, each different (a mark of its own on one of skimage's photos),
    so that no cache or deduplication answers any of them."""
    import skimage.data
    from PIL import Image, ImageDraw

    target = folder / f"{size[0]}x{size[1]}"
    if target.is_dir() and len(list(target.glob("*.jpg"))) >= count:
        return target
    target.mkdir(parents=True, exist_ok=True)
    bases = [
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        for name in PHOTOS
    ]
    rng = random.Random(0)
    for index in range(count):
        image = bases[index % len(bases)].copy()
        x, y = rng.randrange(size[0] - 40), rng.randrange(size[1] - 40)
        ImageDraw.Draw(image).rectangle(
            (x, y, x + 40, y + 40), fill=tuple(rng.randrange(256) for _ in range(3))
        )
        image.save(target / f"{index:05d}.jpg", "JPEG", quality=90)
    return target


class PeakMemory:
    """The largest PSS sum of a process and its descendants while the block runs."""

    def __init__(self, pids):
        self.pids = pids  # a callable: the root pids to follow
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> int:
        import psutil

        total = 0
        for pid in self.pids():
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    total += proc.memory_full_info().pss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak_bytes = max(self.peak_bytes, self._sample())

    @contextmanager
    def watching(self):
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def ceiling(model: Path, runtime: str, hint: str, listed: Path) -> dict:
    """Decode + forward of every photo in this process, the server's backend and limits."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from app.cpus import usable_cpus
    from app.embedding.backend import PoolRequest
    from app.embedding.selection import load_backend
    from app.inference.preparation import image_pixels
    from app.settings.model import ModelSettings
    from app.settings.server import ServerSettings

    server = ServerSettings()
    settings = ModelSettings(
        model_id=str(model),
        model_dir=Path("/nonexistent"),
        runtime=runtime,
        openvino_hint=hint,
        torch_threads=usable_cpus(),
    )
    backend = load_backend(settings)
    request = PoolRequest(0, backend.default_pooling, False)
    files = [Path(line) for line in listed.read_text().splitlines()]

    def pixels(path: Path):
        return image_pixels(
            path.read_bytes(), backend.preprocessor, server.max_image_bytes, server.max_image_pixels
        )

    size = backend.max_batch_size
    started = time.perf_counter()
    with ThreadPoolExecutor(usable_cpus()) as threads:
        pending = [threads.submit(pixels, f) for f in files[: 2 * size]]  # two batches ahead
        submitted = len(pending)
        while pending:
            batch, pending = pending[:size], pending[size:]
            more = files[submitted : submitted + len(batch)]
            pending += [threads.submit(pixels, f) for f in more]
            submitted += len(more)
            stacked = np.stack([job.result() for job in batch])
            backend.embed_batch(stacked, [PoolRequest(len(batch), request.strategy, False)])
    seconds = time.perf_counter() - started
    return {"images": len(files), "seconds": seconds, "img_per_s": len(files) / seconds}


def _timed(command: list[str], env: dict, memory_of_also=lambda: []) -> dict:
    """Run a tool to its end: its own reported rate, its wall time, peak memory."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(lambda: [proc.pid, *memory_of_also()]).watching() as memory:
        output, _ = proc.communicate()
    wall = time.perf_counter() - started
    match = RATE.search(output or "")
    if proc.returncode not in (0, 1) or match is None:
        raise RuntimeError(f"{command[:4]} failed ({proc.returncode}): {output[-3000:]}")
    images, seconds = int(match.group(1)), float(match.group(2))
    return {
        "images": images,
        "seconds": seconds,
        "img_per_s": images / seconds,
        "wall_s": wall,
        "peak_pss_mib": memory.peak_bytes / 2**20,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.batch")
    parser.add_argument("--model", default="mobilenet-v2")
    parser.add_argument("--runtime", default="torch", choices=["torch", "openvino"])
    parser.add_argument(
        "--openvino-hint",
        default="auto",
        choices=["auto", "latency", "throughput"],
        help="OPENVINO_HINT for all three (auto: what a user gets, measured at start-up and cached)",
    )
    parser.add_argument("--count", type=int, default=600, help="photos of each size")
    parser.add_argument("--sizes", default="640x480,4000x3000")
    parser.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "bench-batch-photos")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    parser.add_argument("--pipeline-flags", default="", help="extra flags for python -m app.batch")
    parser.add_argument("--skip", default="", help="comma-separated: ceiling, pipeline, client")
    args = parser.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    model = prepare_model(args.model, args.cache)
    runtime = ["--runtime", args.runtime, "--openvino-hint", args.openvino_hint]
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {
        "model": args.model,
        "runtime": args.runtime,
        "hint": args.openvino_hint,
        "cpus": os.cpu_count(),
        "sizes": {},
    }
    for size_text in args.sizes.split(","):
        [size] = parse_sizes(size_text)
        photos = write_distinct_photos(args.photos, size, args.count)
        cells: dict = {}
        with tempfile.TemporaryDirectory() as tmp:
            # The first --count photos for all three (the folder may hold more from a larger run).
            listed = Path(tmp) / "photos.txt"
            listed.write_text("".join(f"{p}\n" for p in sorted(photos.glob("*.jpg"))[: args.count]))
            if "ceiling" not in skip:
                arguments = (
                    f"Path({str(model)!r}), {args.runtime!r}, {args.openvino_hint!r}, Path({str(listed)!r})"
                )
                call = f"ceiling({arguments})"
                imports = "import json; from pathlib import Path; from bench.batch import ceiling"
                code = f"{imports}; print('RESULT', json.dumps({call}))"
                proc = subprocess.Popen(
                    [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
                )
                with PeakMemory(lambda proc=proc: [proc.pid]).watching() as memory:
                    output, _ = proc.communicate()
                cells["ceiling"] = json.loads(output.split("RESULT ", 1)[1])
                cells["ceiling"]["peak_pss_mib"] = memory.peak_bytes / 2**20
            if "pipeline" not in skip:
                command = [sys.executable, "-m", "app.batch", "--model-id"]
                command += [str(model), "--model-dir", "/nonexistent", *runtime, "--no-progress"]
                command += shlex.split(args.pipeline_flags)
                # A third of the photos first: the difference between the two runs is the
                # rate once Ray, the driver's model check and the actors have started.
                third = Path(tmp) / "third.txt"
                third.write_text("".join(listed.read_text().splitlines(keepends=True)[: args.count // 3]))
                short = _timed([*command, "--out", f"{tmp}/third.emb", str(third)], env)
                cells["pipeline"] = _timed([*command, "--out", f"{tmp}/batch.emb", str(listed)], env)
                extra_images = cells["pipeline"]["images"] - short["images"]
                extra_seconds = cells["pipeline"]["seconds"] - short["seconds"]
                cells["pipeline"]["steady_img_per_s"] = extra_images / extra_seconds
            if "client" not in skip:
                port = free_port()
                server = app_command(model, "bench", port, *runtime)
                with process(server, f"http://127.0.0.1:{port}/v2/health/ready", env) as server_process:
                    client = [sys.executable, "-m", "app.client", str(listed), "--server"]
                    client += [
                        f"http://127.0.0.1:{port}",
                        "--model",
                        "bench",
                        "--out",
                        f"{tmp}/client.parquet",
                    ]
                    cells["client"] = _timed([*client, "--no-progress"], env, lambda: [server_process.pid])
        for name in ("pipeline", "client"):
            if name in cells and "ceiling" in cells:
                cells[f"{name}_vs_ceiling"] = cells[name]["img_per_s"] / cells["ceiling"]["img_per_s"]
        if "pipeline" in cells and "client" in cells:
            cells["pipeline_vs_client"] = cells["pipeline"]["img_per_s"] / cells["client"]["img_per_s"]
        if "pipeline" in cells:
            steady = cells["pipeline"]["steady_img_per_s"]
            for name in ("ceiling", "client"):
                if name in cells:
                    cells[f"pipeline_steady_vs_{name}"] = steady / cells[name]["img_per_s"]
        report["sizes"][size_text] = cells
        print(size_text, json.dumps(cells, indent=1), flush=True)
    sizes = args.sizes.replace(",", "-")
    write_report(report, RESULTS / f"batch-{args.model}-{args.runtime}-{args.openvino_hint}-{sizes}.json")
    return report


if __name__ == "__main__":
    main()
