"""Raw forward throughput in-process: eager fp32 transformers (what a user gets alone) and
the exact configuration the server runs (its TorchBackend, dtype, layout, compilation and, with
several workers, that many processes running at once on their share of the cores)."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import torch
from PIL import Image

from app.embedding.naflex import NaflexPreprocessor


def _images_per_second(step, batch: int, seconds: float) -> float:
    step()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 2 * batch:
        step()
        done += batch
    return done / (time.perf_counter() - started)


# A square image fills a NaFlex model's whole patch budget (its most common cost).
SQUARE = Image.new("RGB", (512, 512), (128, 128, 128))


def _eager_inputs(processor, batch: int) -> dict[str, torch.Tensor]:
    """Random pixels in the model's input shape, as its processor makes them."""
    if hasattr(processor, "max_num_patches"):  # NaFlex: patches, their mask and grid
        features = processor(images=[SQUARE], return_tensors="pt")
        inputs = {name: value.expand(batch, *value.shape[1:]) for name, value in features.items()}
        return inputs | {"pixel_values": torch.randn(inputs["pixel_values"].shape)}
    size = getattr(processor, "crop_size", None) or processor.size  # SigLIP resizes, no crop
    return {"pixel_values": torch.randn(batch, 3, size.height, size.width)}


def eager_fp32(folder, batches: tuple[int, ...], seconds: float) -> dict[int, float]:
    import transformers as tf

    model = tf.AutoModel.from_pretrained(folder).eval()
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    inputs = {b: _eager_inputs(processor, b) for b in batches}

    def step_for(b):
        def step():
            with torch.inference_mode():
                model(**inputs[b])

        return step

    return {b: _images_per_second(step_for(b), b, seconds) for b in batches}


def backend_inputs(embedder, batch: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A batch of random pixels as the backend takes them (NaFlex: each a full patch grid)."""
    template = embedder.preprocessor(SQUARE)
    pixels = (rng or np.random.default_rng(0)).standard_normal((batch, *template.shape), dtype=np.float32)
    if isinstance(embedder.preprocessor, NaflexPreprocessor):
        pixels[:, 0] = template[0]  # the grid row
    return pixels


def configured(embedder, batches: tuple[int, ...], seconds: float) -> dict[int, float]:
    """The backend's own forward; a backend that runs several batches at once (OpenVINO's
    infer requests) is driven by that many threads, and their img/s summed."""
    from concurrent.futures import ThreadPoolExecutor

    from app.embedding.backend import PoolRequest

    strategy = embedder.default_pooling
    rng = np.random.default_rng(0)
    pixels = {b: backend_inputs(embedder, b, rng) for b in batches}

    def step_for(b):
        return lambda: embedder.embed_batch(pixels[b], [PoolRequest(b, strategy, False)])

    threads = embedder.concurrent_batches
    if threads == 1:
        return {b: _images_per_second(step_for(b), b, seconds) for b in batches}
    rates = {}
    with ThreadPoolExecutor(threads) as pool:
        for b in batches:
            step = step_for(b)
            rates[b] = sum(pool.map(lambda _, s=step, n=b: _images_per_second(s, n, seconds), range(threads)))
    return rates


def configured_in_workers(
    settings_fields: dict, workers: int, batches: tuple[int, ...], seconds: float
) -> dict[int, float]:
    """The server's configuration run by `workers` processes at once (as `WORKERS` runs
    it), each with its share of the cores; img/s summed over the processes."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_worker_rates, args=(settings_fields, barrier, batches, seconds, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        per_worker = [results.get(timeout=1800) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    return {b: sum(rates[b] for rates in per_worker) for b in batches}


def _worker_rates(settings_fields: dict, barrier, batches: tuple[int, ...], seconds: float, results) -> None:
    from app.embedding.selection import load_backend
    from app.settings import Settings

    embedder = load_backend(Settings(**settings_fields))  # compiles and warms up
    embedder.adopt_thread()
    rates = {}
    for b in batches:
        barrier.wait()  # every worker measures the same batch size at the same time
        rates[b] = configured(embedder, (b,), seconds)[b]
    results.put(rates)


def forward_cpu_ms_per_image(embedder, batch: int, seconds: float) -> float:
    """This process's CPU time (every thread: the runtime's own pools too) per image while
    the configured forward runs at `batch`: what the server's CPU per image is set against."""
    wall, cpu = time.perf_counter(), time.process_time()
    rate = configured(embedder, (batch,), seconds)[batch]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return 1000 * cpu / (rate * wall)


def batch_one_latency_ms(embedder, repeats: int = 20, between=None) -> float:
    """Median time of one image's forward pass, back to back; or with `between()` run
    before each (not timed)."""
    from app.embedding.backend import PoolRequest

    pixels = backend_inputs(embedder, 1)
    request = [PoolRequest(1, embedder.default_pooling, False)]
    embedder.embed_batch(pixels, request)
    times = []
    for _ in range(repeats):
        if between is not None:
            between()
        started = time.perf_counter()
        embedder.embed_batch(pixels, request)
        times.append(time.perf_counter() - started)
    times.sort()
    return 1000 * times[len(times) // 2]


def batch_one_after_decoding_ms(embedder, jpeg: bytes, repeats: int = 40) -> float:
    """The batch-1 forward as a lone request meets it: after its photo was decoded and
    preprocessed in another thread, the cores idle meanwhile. On a shared 2-vCPU host this
    read 7.2-7.8 ms against 6.5 back to back (MobileNetV2, OpenVINO): caches and clocks
    go cold between requests, which no server code adds."""
    import io
    import threading

    def decode_elsewhere():
        def work():
            with Image.open(io.BytesIO(jpeg)) as image:
                embedder.preprocessor(image.convert("RGB"))

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()

    return batch_one_latency_ms(embedder, repeats, decode_elsewhere)
