"""The OpenVINO runtime backend (RUNTIME=openvino, CPU): runs the exported graph
(app/embedding/openvino_export.py) with the family's pooling inside it.

Several infer requests, as many as OpenVINO finds best for the hint (with `throughput`,
one per stream), so the batcher runs that many batches at once: the next batch is collected
and started while one computes. Each call takes a free request, so `embed_batch` may be
called from several threads."""

from __future__ import annotations

import json
import logging
import queue
import time
from pathlib import Path

import numpy as np

from app.cpus import usable_cpus
from app.embedding.backend import (
    IMAGE,
    ExecutionTiming,
    ImagePreprocessor,
    PoolRequest,
    embed_images,
    split_rows,
)
from app.embedding.model_source import resolve_source
from app.embedding.openvino_export import ExportInfo, ensure_export
from app.embedding.pooling import PoolingStrategy, check_supported
from app.errors import BadRequest
from app.settings.model import DTypeSetting, ModelSettings, QuantizeSetting

log = logging.getLogger(__name__)

PLATFORM = "openvino"


class OpenVinoBackend:
    modalities = (IMAGE,)  # the exported graph is the image tower only

    def __init__(self, folder, info: ExportInfo, settings: ModelSettings):
        import openvino as ov

        self.folder = folder
        self.info = info
        self.model_id = info.model_id
        self.model_type = info.model_type
        self.embedding_dim = info.embedding_dim
        self.input_shape = tuple(info.input_shape)
        self.max_batch_size = settings.max_batch_size
        self.preprocessor = _preprocessor(folder, settings)
        # float32 unless asked for bf16: OpenVINO would pick bf16 by itself on CPUs that have it.
        self.inference_precision = "bf16" if settings.dtype == DTypeSetting.BFLOAT16 else "f32"
        self.threads = settings.torch_threads or usable_cpus()
        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(folder / "model.xml"),
            "CPU",
            {
                "PERFORMANCE_HINT": settings.openvino_hint.value.upper(),
                "INFERENCE_PRECISION_HINT": self.inference_precision,
                # OpenVINO counts the machine's cores, not the container's CPU quota.
                "INFERENCE_NUM_THREADS": self.threads,
            },
        )
        self.concurrent_batches = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.concurrent_batches):
            self._requests.put(self.compiled.create_infer_request())

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> OpenVinoBackend:
        started = time.perf_counter()
        source = resolve_source(settings)
        folder, info = ensure_export(settings, source)
        if settings.quantize == QuantizeSetting.INT8 and info.fidelity is not None:
            from app.embedding.quantization import check_fidelity_gate

            check_fidelity_gate(
                info.fidelity, settings.quantize_max_cosine_drop, settings.quantize_min_neighbours_kept
            )
        backend = cls(folder, info, settings)
        backend.warm_up()
        log.info(
            "loaded model %s (%s, family %s, %d-d embeddings) on OpenVINO %s from %s "
            "(%s inference, hint %s: %d batches in flight, %d threads) in %.1f s",
            info.model_id,
            info.model_type,
            info.family,
            info.embedding_dim,
            info.precision,
            folder,
            backend.inference_precision,
            settings.openvino_hint.value,
            backend.concurrent_batches,
            backend.threads,
            time.perf_counter() - started,
        )
        return backend

    def warm_up(self) -> None:
        """Every request runs the largest batch once before readiness."""
        pixels = np.zeros((self.max_batch_size, *self.input_shape), dtype=np.float32)
        requests = [self._requests.get() for _ in range(self.concurrent_batches)]
        for request in requests:
            request.infer({0: pixels})
            self._requests.put(request)

    def check_text(self) -> None:
        raise BadRequest(
            f"model {self.model_id} runs on RUNTIME=openvino, which serves image embeddings only; "
            "text embeddings need RUNTIME=torch"
        )

    def tokenize(self, texts: list[str]):
        self.check_text()

    text_logits: dict[str, float] = {}  # no text tower here

    def adopt_thread(self) -> None:
        """Nothing to do: OpenVINO runs on its own thread pool whatever thread calls it."""

    @property
    def supported_poolings(self) -> tuple[PoolingStrategy, ...]:
        return tuple(PoolingStrategy(p) for p in self.info.poolings)

    @property
    def default_pooling(self) -> PoolingStrategy:
        return PoolingStrategy(self.info.default_pooling)

    def check_pooling(self, strategy: PoolingStrategy) -> None:
        check_supported(strategy, self.supported_poolings, self.model_id, self.model_type)

    def describe(self) -> dict[str, str]:
        dtype = (
            "int8"
            if self.info.precision == "int8"
            else {"f32": "float32", "bf16": "bfloat16"}[self.inference_precision]
        )
        return {"platform": PLATFORM, "family": self.info.family, "device": "cpu", "dtype": dtype}

    def is_out_of_memory(self, exc: BaseException) -> bool:
        message = str(exc).lower()
        return isinstance(exc, MemoryError) or "bad_alloc" in message or "out of memory" in message

    def embed_batch(
        self, pixels: np.ndarray, requests: list[PoolRequest]
    ) -> tuple[list[np.ndarray], ExecutionTiming]:
        t0 = time.perf_counter_ns()
        pixels = np.ascontiguousarray(self.preprocessor.batch_inputs(pixels), dtype=np.float32)
        request = self._requests.get()  # a free one: at most concurrent_batches callers at once
        t1 = time.perf_counter_ns()
        try:
            # share_inputs: no copy of the batch; outputs are copied out of the request.
            outputs = request.infer({0: pixels}, share_inputs=True)
            # infer() copies its outputs, so the rows stay valid after the request is reused.
            pooled = {s: outputs[s.value] for s in {r.strategy for r in requests}}
        finally:
            self._requests.put(request)
        t2 = time.perf_counter_ns()
        results = split_rows([pooled[r.strategy] for r in requests], requests)
        return results, ExecutionTiming(pixels.shape[0], t1 - t0, t2 - t1, time.perf_counter_ns() - t2)

    def embed(
        self, images, strategy: PoolingStrategy, normalize: bool
    ) -> tuple[np.ndarray, list[ExecutionTiming]]:
        """[N, D] float32 embeddings of PIL images, max_batch_size per forward pass (no batcher)."""
        return embed_images(self, images, strategy, normalize)


def _preprocessor(folder: Path, settings: ModelSettings) -> ImagePreprocessor:
    """The export's written fast path where it has one (no transformers or torch import),
    else the path made from the folder's image processor."""
    from app.embedding.image_processor import load_image_processor
    from app.embedding.preprocess import FAST_STEPS_FILE, FastPreprocessor, make_preprocessor

    steps = folder / FAST_STEPS_FILE
    if settings.fast_preprocessing and not settings.max_num_patches and steps.is_file():
        return FastPreprocessor.from_steps(
            json.loads(steps.read_text()), lambda: load_image_processor(str(folder))
        )
    return make_preprocessor(
        load_image_processor(str(folder)), settings.fast_preprocessing, settings.max_num_patches
    )
