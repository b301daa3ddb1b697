"""The torch runtime backend (app/embedding/backend.py): one forward pass over a batch of
preprocessed images, then pooling and normalisation per request. Synchronous and
thread-confined: the batcher's thread runs it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.embedding.backend import IMAGE, TEXT, ExecutionTiming, PoolRequest, embed_images, split_rows
from app.embedding.device import resolve_device, resolve_dtype
from app.embedding.execution import ExecutionOptions, configure_threads, prepare_model
from app.embedding.families import CONVOLUTIONAL_MODEL_TYPES, FamilyAdapter, generic_adapter
from app.embedding.loader import LoadedModel, load_model
from app.embedding.model_source import resolve_source
from app.embedding.openvino_export import is_export
from app.embedding.pooling import PoolingStrategy, check_supported
from app.embedding.preprocess import make_preprocessor, probe_image
from app.embedding.text_tower import TextTower, TokenizedTexts
from app.errors import BadRequest
from app.settings.model import ModelSettings

log = logging.getLogger(__name__)


PLATFORM = "pytorch_transformers"


class TorchBackend:
    concurrent_batches = 1  # every forward on the one model thread (see model_thread.py)

    def __init__(
        self,
        loaded: LoadedModel,
        options: ExecutionOptions,
        fast_preprocessing: bool = True,
        max_num_patches: int | None = None,
    ):
        self.options = options
        self.device = options.device
        self.dtype = options.dtype
        self.max_batch_size = options.max_batch_size
        self.model_id = loaded.source.model_id
        self.model_type = loaded.config.model_type
        self.preprocessor = make_preprocessor(loaded.processor, fast_preprocessing, max_num_patches)
        self.model = loaded.model
        self.text = loaded.text
        self.modalities = (IMAGE, TEXT) if self.text is not None else (IMAGE,)
        self.forward_model = prepare_model(loaded.model, options)
        # One eager forward tells the input and embedding sizes and, for unknown families, the rule.
        probe = torch.from_numpy(self.preprocessor(probe_image()))
        self.input_shape = tuple(probe.shape)
        outputs = self._forward(probe.unsqueeze(0), self.model)
        self.adapter: FamilyAdapter = loaded.adapter or generic_adapter(outputs.last_hidden_state)
        self.embedding_dim = int(self.adapter.pool(outputs, self.adapter.default).shape[-1])

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> TorchBackend:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        threads = configure_threads(settings.torch_threads)
        source = resolve_source(settings)
        if is_export(Path(source.location)):
            raise ValueError(f"{source.location} is an OpenVINO export: serve it with RUNTIME=openvino")
        started = time.perf_counter()
        loaded = load_model(source, device, dtype)
        is_cnn = loaded.config.model_type in CONVOLUTIONAL_MODEL_TYPES
        options = ExecutionOptions(
            device=device,
            dtype=dtype,
            channels_last=settings.channels_last if settings.channels_last is not None else is_cnn,
            compile=settings.compile,
            max_batch_size=settings.max_batch_size,
            threads=threads,
        )
        embedder = cls(loaded, options, settings.fast_preprocessing, settings.max_num_patches)
        embedder.warm_up()
        log.info(
            "loaded model %s (%s, family %s, %d-d embeddings) from %s on %s as %s "
            "(channels_last=%s, compile=%s, %d torch threads, %s preprocessing) in %.1f s",
            source.model_id,
            embedder.model_type,
            embedder.adapter.name,
            embedder.embedding_dim,
            source.origin,
            device,
            str(dtype).removeprefix("torch."),
            options.channels_last,
            options.compile,
            threads,
            "fast" if embedder.preprocessor.fast else "processor",
            time.perf_counter() - started,
        )
        return embedder

    def adopt_thread(self) -> None:
        """Give the calling thread (the one that will run the model) its intra-op threads:
        with OpenMP the setting belongs to the thread that makes it."""
        if self.options.threads:
            torch.set_num_threads(self.options.threads)

    def warm_up(self) -> None:
        """Run the largest batch (and, compiled, every bucket) before readiness: the first
        request pays no allocation or compilation."""
        sizes = self.options.buckets if self.options.compile else (self.max_batch_size,)
        for size in sizes:
            started = time.perf_counter()
            self._forward(torch.zeros((size, *self.input_shape)), self.forward_model)
            log.debug("warm-up forward at batch %d took %.2f s", size, time.perf_counter() - started)
        if self.text is not None:
            tokens = self.text.tokenize([""] * self.max_batch_size).tokens
            self.text.embed(torch.from_numpy(tokens).to(self.device))

    def check_text(self) -> None:
        self._text_tower()

    @property
    def text_logits(self) -> dict[str, float]:
        return dict(self.text.logits) if self.text is not None else {}

    def _text_tower(self) -> TextTower:
        if self.text is None:
            raise BadRequest(
                f"model {self.model_id} ({self.model_type}) has no text tower: text embeddings need "
                "a full CLIP, MetaCLIP 2 or SigLIP model folder with its tokenizer"
            )
        return self.text

    def tokenize(self, texts: list[str]) -> TokenizedTexts:
        return self._text_tower().tokenize(texts)

    def describe(self) -> dict[str, str]:
        return {
            "platform": PLATFORM,
            "family": self.adapter.name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return is_out_of_memory(exc)

    @property
    def supported_poolings(self) -> tuple[PoolingStrategy, ...]:
        return self.adapter.supported

    @property
    def default_pooling(self) -> PoolingStrategy:
        return self.adapter.default

    def check_pooling(self, strategy: PoolingStrategy) -> None:
        check_supported(strategy, self.adapter.supported, self.model_id, self.model_type)

    def _forward(self, pixels: torch.Tensor, model):
        pixels = pixels.to(self.device, self.dtype)
        if self.options.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(pixel_values=pixels)

    def embed_batch(
        self, pixels: np.ndarray | torch.Tensor, requests: list[PoolRequest]
    ) -> tuple[list[np.ndarray], ExecutionTiming]:
        """One forward pass over `pixels` (the requests' images, stacked in order); each
        request gets its own rows pooled and normalised its own way."""
        if requests[0].modality == TEXT:
            return self._embed_texts(pixels, requests)
        t0 = time.perf_counter_ns()
        if isinstance(pixels, np.ndarray):
            if not self.options.compile:  # compiled: fixed shapes (a NaFlex batch at its full budget)
                pixels = self.preprocessor.batch_inputs(pixels)
            pixels = torch.from_numpy(pixels)  # no copy
        batch = pixels.shape[0]
        if self.options.compile:
            padded = self.options.bucket_for(batch)
            if padded > batch:
                pixels = torch.cat([pixels, pixels.new_zeros((padded - batch, *pixels.shape[1:]))])
        t1 = time.perf_counter_ns()
        outputs = self._forward(pixels, self.forward_model)
        t2 = time.perf_counter_ns()
        with torch.inference_mode():
            pooled = {
                strategy: self.adapter.pool(outputs, strategy)[:batch].float().cpu().numpy()
                for strategy in {r.strategy for r in requests}
            }
        results = split_rows([pooled[r.strategy] for r in requests], requests)
        return results, ExecutionTiming(batch, t1 - t0, t2 - t1, time.perf_counter_ns() - t2)

    def _embed_texts(self, tokens: np.ndarray | torch.Tensor, requests: list[PoolRequest]):
        t0 = time.perf_counter_ns()
        on_device = torch.as_tensor(tokens).to(self.device)  # no copy on the CPU
        t1 = time.perf_counter_ns()
        features = self._text_tower().embed(on_device)
        t2 = time.perf_counter_ns()
        with torch.inference_mode():
            rows = features.float().cpu().numpy()
        results = split_rows([rows] * len(requests), requests)
        return results, ExecutionTiming(on_device.shape[0], t1 - t0, t2 - t1, time.perf_counter_ns() - t2)

    def embed(
        self, images: list[Image.Image], strategy: PoolingStrategy, normalize: bool
    ) -> tuple[np.ndarray, list[ExecutionTiming]]:
        """[N, D] float32 embeddings of PIL images, max_batch_size per forward pass (no batcher)."""
        return embed_images(self, images, strategy, normalize)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()
