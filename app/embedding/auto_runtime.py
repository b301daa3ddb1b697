"""RUNTIME=auto and OPENVINO_HINT=auto (the defaults): the runtime and hint that run this
model fastest on this machine, among those that give torch's float32 embeddings.

Torch, without measuring, on a GPU or MPS, for a model with a text tower (OpenVINO's graph
is the image tower only), and with COMPILE or a DTYPE other than float32. Otherwise the
candidates are loaded one at a time and measured on synthetic images: torch, and OpenVINO
with each hint whose embeddings match torch's (min cosine >= 0.99999 over every pooling);
with QUANTIZE=int8, OpenVINO int8 and float32, int8 chosen only where it is the faster.
The winner is the fastest at the largest batch (the best of a few short rounds); among the
candidates within 25% of it, the one with the lowest batch-1 latency; it runs batches of
its knee (KNEE). The decision is cached in MODEL_CACHE_DIR/auto/, keyed by the model's
files, the machine (usable CPUs, ISA) and the settings that change speed, so a restart
loads only the winner. Part of the backend choice (selection.py)."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.cpus import usable_cpus
from app.embedding.backend import PoolRequest, RuntimeBackend
from app.embedding.fidelity import compare
from app.embedding.file_digest import folder_digest
from app.settings.model import (
    DTypeSetting,
    ModelSettings,
    OpenVinoHint,
    QuantizeSetting,
    RuntimeSetting,
)

log = logging.getLogger(__name__)

EQUIVALENT_COSINE = 0.99999  # OpenVINO float32 must give torch's float32 embeddings
# Within 25% of the best throughput, the lower batch-1 latency wins: every request meets
# one forward's latency, only a full load meets its throughput. On a shared 2-core machine
# the two OpenVINO hints' readings swung by up to 21% between start-ups (DINOv2-S's latency
# hint: 16.9 to 29.6 img/s), while batch-1 latency told them apart by 1.5 to 2 times and
# the latency hint served as many images at 16 clients; the throughput hint's real gains,
# several streams on many cores, are larger than that. (Not everywhere: on 2 AVX2-only
# cores it served DINOv2-S 18-20% more at 16 clients, with a batch-1 forward 1.8x slower;
# docs/benchmarks.md. Lone requests keep the latency hint; a full-load deployment sets it.)
NEAR_BEST = 0.75
PROBE_SECONDS = 1.0  # throughput measured per candidate, in PROBE_ROUNDS rounds
# The best round counts: a neighbour's burst on a shared machine slows one round, not the
# candidate (one 1 s reading once put OpenVINO's latency hint 18% behind the throughput
# hint for MobileNetV2, whose lone requests it serves in half the time, at equal speed).
PROBE_ROUNDS = 3
SINGLE_FORWARDS = 9  # batch-1 latency: the median of up to this many, within PROBE_SECONDS
# The forward batch: the smallest power of two from MIN_FORWARD_BATCH up to MAX_BATCH_SIZE
# that runs within 5% of the candidate's best throughput. Past that knee a larger batch adds
# only waiting: on 2 cores MobileNetV2 served 188 and 193 img/s at 16 clients with batches
# of up to 4 and 8 against 165 with 32, in one run (the next requests' decoding overlaps a
# short forward).
KNEE = 0.95
# Not below 8 (or MAX_BATCH_SIZE): the sweep times the bare forward, not the server's own
# cost per forward pass (collecting the batch, handing rows back to each request).
# MobileNetV2 with a knee at 1 served 119 img/s at 16 clients.
MIN_FORWARD_BATCH = 8
SWEEP_ROUND_SECONDS = 0.2  # per batch size, while the sweep stays within PROBE_SECONDS
PROBE_IMAGES = 8  # synthetic images for the equivalence check
DECISION_VERSION = 2  # bump when the rule or the measurement changes
# The settings that change which candidate is fastest, or which candidates there are.
_SPEED_SETTINGS = {
    "runtime",
    "openvino_hint",
    "quantize",
    "calibration_dir",
    "quantize_max_cosine_drop",
    "quantize_min_neighbours_kept",
    "max_batch_size",
    "torch_threads",
    "channels_last",
    "fast_preprocessing",
    "max_num_patches",
}


@dataclass(frozen=True)
class Measured:
    runtime: str  # torch or openvino
    hint: str | None  # OpenVINO's hint
    precision: str  # float32 or int8
    images_per_second: float  # at the largest batch (best round), with its batches in flight
    batch1_ms: float  # median of a few single-image forwards
    min_cosine: float | None  # to torch float32 (None: torch itself, or int8 with its own gate)
    batch_size: int  # its forward batch: the knee of its throughput (KNEE)


@dataclass(frozen=True)
class Decision:
    runtime: str
    hint: str | None
    precision: str
    reason: str
    measured: list[Measured]
    batch_size: int | None = None  # the forward batch; None: MAX_BATCH_SIZE as given

    def settings(self, settings: ModelSettings) -> ModelSettings:
        update: dict[str, object] = {"runtime": RuntimeSetting(self.runtime)}
        if self.batch_size is not None:
            update["max_batch_size"] = min(self.batch_size, settings.max_batch_size)
        if self.hint is not None:
            update["openvino_hint"] = OpenVinoHint(self.hint)
        if self.precision == "float32" and settings.quantize == QuantizeSetting.INT8:
            update["quantize"] = QuantizeSetting.NONE
        return settings.model_copy(update=update)


def needs_choice(settings: ModelSettings) -> bool:
    return settings.runtime == RuntimeSetting.AUTO or (
        settings.runtime == RuntimeSetting.OPENVINO and settings.openvino_hint == OpenVinoHint.AUTO
    )


def resolve(settings: ModelSettings) -> ModelSettings:
    """The settings with RUNTIME and OPENVINO_HINT decided (cached, or measured now)."""
    if not needs_choice(settings):
        return settings
    torch_only = _torch_only(settings)
    if torch_only is not None:
        log.info("RUNTIME=auto: torch (%s)", torch_only)
        return settings.model_copy(update={"runtime": RuntimeSetting.TORCH})
    from app.embedding.model_source import resolve_source
    from app.embedding.openvino_export import is_export, local_folder

    source = resolve_source(settings)
    folder = local_folder(source)
    if is_export(folder):  # an OpenVINO export given as the model: only OpenVINO runs it
        return _given_export(settings)
    cache = _decision_path(settings, folder, source.model_id)
    decision = _read(cache)
    if decision is not None:
        log.info(
            "RUNTIME=auto: %s (decided on this machine earlier: %s; cached in %s)",
            _name(decision.runtime, decision.hint, decision.precision),
            decision.reason,
            cache,
        )
    else:
        decision = decide(settings)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(asdict(decision), indent=2) + "\n")
        chosen = _name(decision.runtime, decision.hint, decision.precision)
        log.info("RUNTIME=auto: %s (%s); cached in %s", chosen, decision.reason, cache)
    return decision.settings(settings)


def _given_export(settings: ModelSettings) -> ModelSettings:
    hint = settings.openvino_hint
    if hint == OpenVinoHint.AUTO:
        hint = OpenVinoHint.THROUGHPUT  # a given export is served as it is, without measuring
    return settings.model_copy(update={"runtime": RuntimeSetting.OPENVINO, "openvino_hint": hint})


def _torch_only(settings: ModelSettings) -> str | None:
    """Why this model runs on torch without measuring, or None."""
    if settings.runtime == RuntimeSetting.OPENVINO or settings.quantize == QuantizeSetting.INT8:
        return None  # OpenVINO asked for, or int8, which only OpenVINO runs
    from app.embedding.gpu_presence import certainly_cpu
    from app.installed import is_installed

    if not certainly_cpu(settings.device):
        from app.embedding.device import resolve_device

        device = resolve_device(settings.device)
        if device.type != "cpu":
            return f"the model runs on {device}"
    if settings.compile:
        return "COMPILE is torch.compile"
    if settings.dtype not in (DTypeSetting.AUTO, DTypeSetting.FLOAT32):
        return f"DTYPE={settings.dtype.value} is asked for"
    if not is_installed("openvino"):
        return "OpenVINO is not installed"
    return None


def decide(settings: ModelSettings) -> Decision:
    """Load each candidate in turn, check its embeddings and measure it; free them all."""
    from app.embedding.openvino_backend import OpenVinoBackend
    from app.embedding.torch_backend import TorchBackend

    int8 = settings.quantize == QuantizeSetting.INT8
    reference = TorchBackend.from_settings(
        settings.model_copy(update={"runtime": RuntimeSetting.TORCH, "quantize": QuantizeSetting.NONE})
    )
    if len(reference.modalities) > 1 and settings.runtime == RuntimeSetting.AUTO:
        return Decision("torch", None, "float32", "the model has a text tower, which only torch serves", [])
    pixels = _probe_pixels(reference)
    expected = _pooled(reference, pixels)
    measured: list[Measured] = []
    if settings.runtime == RuntimeSetting.AUTO and not int8:
        measured.append(_measure(reference, pixels, "torch", None, "float32", None))
    del reference
    gc.collect()
    hints = [settings.openvino_hint]
    if settings.openvino_hint == OpenVinoHint.AUTO:
        hints = [OpenVinoHint.THROUGHPUT, OpenVinoHint.LATENCY]
    precisions = [QuantizeSetting.INT8, QuantizeSetting.NONE] if int8 else [QuantizeSetting.NONE]
    for precision in precisions:
        for hint in hints:
            candidate = settings.model_copy(
                update={"runtime": RuntimeSetting.OPENVINO, "openvino_hint": hint, "quantize": precision}
            )
            try:
                backend = OpenVinoBackend.from_settings(candidate)
            except Exception as exc:  # noqa: BLE001 - a model OpenVINO cannot convert runs on torch
                if int8 and precision == QuantizeSetting.INT8:
                    raise  # the int8 gate's refusal stops start-up with its figures
                log.warning("RUNTIME=auto: OpenVINO cannot run this model (%s: %s)", type(exc).__name__, exc)
                break
            name = "int8" if precision == QuantizeSetting.INT8 else "float32"
            cosine = None if name == "int8" else _min_cosine(expected, _pooled(backend, pixels))
            if cosine is not None and cosine < EQUIVALENT_COSINE:
                log.warning(
                    "RUNTIME=auto: OpenVINO's embeddings differ from torch's (min cosine %.6f): not used",
                    cosine,
                )
                del backend
                break
            measured.append(_measure(backend, pixels, "openvino", hint.value, name, cosine))
            del backend
            gc.collect()
    return choose(measured, prefer_int8=int8)


def choose(measured: list[Measured], prefer_int8: bool = False) -> Decision:
    """The winner among the measured candidates (see the module's rule), and why."""
    if not measured:
        return Decision("torch", None, "float32", "no other runtime gives torch's embeddings", [])
    best = max(m.images_per_second for m in measured)
    near = [m for m in measured if m.images_per_second >= NEAR_BEST * best]
    winner = min(near, key=lambda m: m.batch1_ms)
    figures = "; ".join(
        f"{_name(m.runtime, m.hint, m.precision)} {m.images_per_second:.1f} img/s, "
        f"batch 1 {m.batch1_ms:.1f} ms, knee at batch {m.batch_size}"
        for m in measured
    )
    reason = f"forward batch {winner.batch_size}; measured: {figures}"
    if prefer_int8 and winner.precision == "float32":
        reason = f"QUANTIZE=int8 is not faster than float32 on this machine, so float32 is served; {reason}"
    return Decision(winner.runtime, winner.hint, winner.precision, reason, measured, winner.batch_size)


def _name(runtime: str, hint: str | None, precision: str) -> str:
    if runtime == "torch":
        return "torch"
    return f"openvino {precision} (hint {hint})"


def _probe_pixels(backend: RuntimeBackend) -> np.ndarray:
    """PROBE_IMAGES synthetic photos-like images (smooth colour fields with noise), preprocessed."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(PROBE_IMAGES):
        y, x = np.mgrid[0:240, 0:320]
        scales = rng.uniform(0.1, 1.0, 3)
        base = np.stack([x * scales[0], y * scales[1], (x + y) * scales[2] / 2], -1)
        noisy = base + rng.normal(0, 20, base.shape)
        images.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return np.stack([backend.preprocessor(image) for image in images])


def _pooled(backend: RuntimeBackend, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The probe images' embeddings under every pooling (one request each: a request owns
    its own rows of a batch, so the images go in once per pooling)."""
    poolings = backend.supported_poolings
    requests = [PoolRequest(len(pixels), strategy, False) for strategy in poolings]
    rows, _ = backend.embed_batch(np.concatenate([pixels] * len(poolings)), requests)
    return {request.strategy.value: row for request, row in zip(requests, rows, strict=True)}


def _min_cosine(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    common = set(expected) & set(got)
    return min((compare(expected[p], got[p]).min_cosine for p in common), default=0.0)


def _measure(
    backend: RuntimeBackend,
    pixels: np.ndarray,
    runtime: str,
    hint: str | None,
    precision: str,
    cosine: float | None,
) -> Measured:
    batch = np.resize(pixels, (backend.max_batch_size, *pixels.shape[1:]))  # the probe images, repeated
    rounds: list[float] = []
    started = time.monotonic()
    # A round runs at least one batch: a large model's first round may fill the time alone.
    while not rounds or (len(rounds) < PROBE_ROUNDS and time.monotonic() - started < PROBE_SECONDS):
        rounds.append(_throughput(backend, batch))
    throughput = max(rounds)
    # The choice compares the largest batch: at batch 1 the throughput hint's two streams
    # of one thread each out-ran the latency hint's raw forward (422 against 340 img/s,
    # MobileNetV2), yet served fewer images at 16 clients and lone requests in twice the time.
    knee = _knee(backend, pixels, throughput)
    one = batch[:1]
    single = [PoolRequest(1, backend.default_pooling, False)]
    timings: list[float] = []
    stop = time.monotonic() + PROBE_SECONDS
    while len(timings) < 3 or (len(timings) < SINGLE_FORWARDS and time.monotonic() < stop):
        tick = time.perf_counter()
        backend.embed_batch(one, single)
        timings.append((time.perf_counter() - tick) * 1000)
    return Measured(runtime, hint, precision, throughput, float(np.median(timings)), cosine, knee)


def _knee(backend: RuntimeBackend, pixels: np.ndarray, at_largest: float) -> int:
    """The smallest power of two from MIN_FORWARD_BATCH whose throughput is within KNEE of
    the best measured, the largest batch's included. Smaller batches first, while the sweep
    stays within PROBE_SECONDS: a large model whose smaller batches already fill the time
    keeps the largest batch unless one of them has reached the knee."""
    largest = backend.max_batch_size
    sizes = [1 << k for k in range(largest.bit_length()) if MIN_FORWARD_BATCH <= 1 << k < largest]
    speeds: dict[int, float] = {largest: at_largest}
    stop = time.monotonic() + PROBE_SECONDS
    for size in sizes:
        if time.monotonic() >= stop:
            break
        speeds[size] = _throughput(backend, np.resize(pixels, (size, *pixels.shape[1:])), SWEEP_ROUND_SECONDS)
    best = max(speeds.values())
    return min(size for size, speed in speeds.items() if speed >= KNEE * best)


def _throughput(backend: RuntimeBackend, batch: np.ndarray, seconds: float | None = None) -> float:
    """Images per second over one round (at least one batch), with the backend's batches in flight."""
    request = [PoolRequest(len(batch), backend.default_pooling, False)]
    counts: list[int] = []
    stop = time.monotonic() + (seconds or PROBE_SECONDS / PROBE_ROUNDS)

    def run() -> None:
        backend.adopt_thread()
        done = 0
        while time.monotonic() < stop:
            backend.embed_batch(batch, request)
            done += len(batch)
        counts.append(done)

    started = time.monotonic()
    if backend.concurrent_batches == 1:
        # In this thread, which loaded and warmed the model: a new thread would start a
        # second OpenMP team for torch, and two teams on the same cores halve its speed.
        run()
    else:
        threads = [threading.Thread(target=run) for _ in range(backend.concurrent_batches)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sum(counts) / (time.monotonic() - started)


def _decision_path(settings: ModelSettings, folder: Path, model_id: str) -> Path:
    from importlib.metadata import version

    import openvino

    speed_settings = settings.model_dump(mode="json", include=_SPEED_SETTINGS)
    # TORCH_THREADS=0 and its resolved value (the process's share) are the same setting.
    speed_settings["torch_threads"] = settings.torch_threads or usable_cpus()
    material = {
        "version": DECISION_VERSION,
        "files": folder_digest(folder),
        # The installed versions, read without importing torch and transformers (seconds).
        "versions": [version("torch"), version("transformers"), openvino.__version__],
        "cpus": usable_cpus(),
        "isa": _cpu_flags(),
        "settings": speed_settings,
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model_id).strip("-.")[-60:] or "model"
    return Path(settings.model_cache_dir) / "auto" / f"{slug}-{key[:16]}.json"


def _cpu_flags() -> str:
    """The CPU's instruction-set flags that decide OpenVINO's and torch's kernels."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(re.findall(r"\b(avx2|avx512\w*|amx\w*|fma|sse4_2|neon|asimd\w*)\b", text))
    return ",".join(sorted(flags))


def _read(path: Path) -> Decision | None:
    try:
        raw = json.loads(path.read_text())
        raw["measured"] = [Measured(**m) for m in raw["measured"]]
        return Decision(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("RUNTIME=auto: the cached decision %s is unreadable (%s): measuring again", path, exc)
        return None
