"""Raw forward throughput in-process: eager fp32 transformers (what a user gets alone) and
the exact configuration the server runs (its Embedder, dtype, layout and compilation)."""

from __future__ import annotations

import time

import torch


def _images_per_second(step, batch: int, seconds: float) -> float:
    step()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 2 * batch:
        step()
        done += batch
    return done / (time.perf_counter() - started)


def eager_fp32(folder, batches: tuple[int, ...], seconds: float) -> dict[int, float]:
    import transformers as tf

    model = tf.AutoModel.from_pretrained(folder).eval()
    size = tf.AutoImageProcessor.from_pretrained(folder).crop_size
    pixels = {b: torch.randn(b, 3, size.height, size.width) for b in batches}

    def step_for(b):
        def step():
            with torch.inference_mode():
                model(pixel_values=pixels[b])

        return step

    return {b: _images_per_second(step_for(b), b, seconds) for b in batches}


def configured(embedder, batches: tuple[int, ...], seconds: float) -> dict[int, float]:
    from app.embedding.embedder import PoolRequest

    strategy = embedder.default_pooling
    pixels = {b: torch.randn(b, *embedder.input_shape) for b in batches}

    def step_for(b):
        return lambda: embedder.embed_pixels(pixels[b], [PoolRequest(b, strategy, False)])

    return {b: _images_per_second(step_for(b), b, seconds) for b in batches}


def batch_one_latency_ms(embedder, repeats: int = 20) -> float:
    from app.embedding.embedder import PoolRequest

    pixels = torch.randn(1, *embedder.input_shape)
    request = [PoolRequest(1, embedder.default_pooling, False)]
    embedder.embed_pixels(pixels, request)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        embedder.embed_pixels(pixels, request)
        times.append(time.perf_counter() - started)
    times.sort()
    return 1000 * times[len(times) // 2]
