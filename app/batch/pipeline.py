"""The Ray Data plan of `python -m app.batch`: the model checked and prepared once on the
driver, then items -> decoding tasks -> embedding actors -> EmbeddingSink, or, with the
decoding in the actors, items -> decoding embedding actors -> EmbeddingSink."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from app.batch.decode import decode_block
from app.batch.embed import DecodingEmbeddingActor, EmbeddingActor
from app.batch.sink import EmbeddingSink, gather_failures
from app.client import Item
from app.embedding.pooling import PoolingStrategy
from app.embedding.preprocess import probe_image
from app.settings.model import ModelSettings
from app.settings.server import ServerSettings

# A decoding worker before its first image: Python with torch, transformers and Pillow
# imported (about 360 MiB measured by Ray Data on a tiny model).
WORKER_BASELINE_BYTES = 400 * 1024 * 1024


@dataclass(frozen=True)
class PipelineOptions:
    actors: tuple[int, int]  # the actor pool's (min, max) size: equal for a fixed pool
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    images_per_task: int = 64  # rows per decoding task (and per block)
    progress: bool = True
    decode_in_actors: bool = False  # each actor decodes its rows in threads: no decoding tasks


@dataclass(frozen=True)
class ModelPlan:
    """What every actor loads and how the decoding tasks feed it, decided once."""

    settings: ModelSettings  # RUNTIME and OPENVINO_HINT decided, TORCH_THREADS set
    preprocessor: object  # the backend's own (pickled to the decoding tasks)
    input_shape: tuple[int, ...]
    pooling: PoolingStrategy
    normalize: bool


def plan_model(settings: ModelSettings, threads: int) -> ModelPlan:
    """Load the model once here, as each actor will: a setting that cannot work (a pooling
    the family lacks, an int8 export that fails its gate) stops the job before any actor
    starts, and RUNTIME=auto's measurement and the OpenVINO export are made once, cached,
    not once per actor."""
    from app.embedding import auto_runtime
    from app.embedding.selection import load_backend

    settings = settings.model_copy(update={"torch_threads": settings.torch_threads or threads})
    settings = auto_runtime.resolve(settings)
    backend = load_backend(settings)
    pooling = settings.pooling_strategy or backend.default_pooling
    backend.check_pooling(pooling)
    preprocessor = backend.preprocessor
    plan = ModelPlan(
        settings,
        preprocessor,
        tuple(preprocessor(probe_image()).shape),
        pooling,
        settings.normalize_embeddings,
    )
    del backend
    gc.collect()
    return plan


class PoolTooLarge(ValueError):
    """An actor pool whose minimum leaves no CPU for decoding: Ray Data would wait forever."""


def fit_pool(options: PipelineOptions, cluster_cpus: float) -> PipelineOptions:
    """The actor pool within `cluster_cpus`, one CPU left for the decoding and writing
    tasks: a pool holding every CPU starves them and the job never ends (seen: --actors 2
    on two cores). The minimum must fit, the maximum is lowered to what fits."""
    fits = int((cluster_cpus - 1) // options.cpus_per_actor) if options.cpus_per_actor > 0 else 1 << 30
    low, high = options.actors
    if low > fits:
        raise PoolTooLarge(
            f"--actors {low} reserve {low * options.cpus_per_actor:g} of the {cluster_cpus:g} CPUs and leave "
            f"none for the decoding and writing tasks: at most {max(fits, 0)} actors of --cpus-per-actor "
            f"{options.cpus_per_actor:g}"
        )
    return replace(options, actors=(low, min(high, fits)))


@dataclass
class RunSummary:
    embedded: int
    failures: list[dict]
    seconds: float


def embed_items(
    items: list[Item], out: Path, server: ServerSettings, plan: ModelPlan, options: PipelineOptions
) -> RunSummary:
    """Run the pipeline over `items` (ids not yet in `out`) on the connected Ray cluster."""
    import ray.data

    started = time.perf_counter()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = options.progress
    table = pa.table({"id": [i.id for i in items], "source": [i.source for i in items]})
    step = options.images_per_task
    blocks = [table.slice(start, step) for start in range(0, table.num_rows, step)]
    low, high = options.actors
    sink = EmbeddingSink(out, run_id=f"{time.time_ns():x}")
    model_kwargs = {"settings": plan.settings, "pooling": plan.pooling, "normalize": plan.normalize}
    actors: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        "num_cpus": options.cpus_per_actor,
        "num_gpus": options.gpus_per_actor or None,
    }
    rows = ray.data.from_arrow(blocks)
    if options.decode_in_actors:
        embedded = rows.map_batches(
            DecodingEmbeddingActor,
            batch_size=None,  # a block per call: the actor's threads decode it beside the forward
            fn_constructor_kwargs={**model_kwargs, "server": server},
            **actors,
        )
    else:
        embedded = rows.map_batches(
            partial(
                decode_block, server=server, preprocessor=plan.preprocessor, input_shape=plan.input_shape
            ),
            batch_size=None,  # a block per task
            num_cpus=1,
            # What a task holds at most: its block's inputs and one image being decoded.
            # A reservation unlike the actors' also keeps Ray from fusing decoding into
            # them: decoding stays in tasks of its own, beside the model, not in front of it.
            memory=_decoding_memory(server, plan, options),
        ).map_batches(
            EmbeddingActor,
            batch_size=plan.settings.max_batch_size,
            fn_constructor_kwargs=model_kwargs,
            **actors,
        )
    embedded.write_datasink(sink)
    failures = gather_failures(out)
    return RunSummary(sink.embedded, failures, time.perf_counter() - started)


def _decoding_memory(server: ServerSettings, plan: ModelPlan, options: PipelineOptions) -> int:
    inputs = options.images_per_task * 4 * int(np.prod(plan.input_shape))
    return WORKER_BASELINE_BYTES + inputs + 3 * server.max_image_pixels
