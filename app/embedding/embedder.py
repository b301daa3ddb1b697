"""The embedder: preprocess images with the model's processor, forward in batches, pool,
normalise. Synchronous and thread-confined: callers run it off the event loop."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from app.embedding.device import resolve_device, resolve_dtype
from app.embedding.families import FamilyAdapter, generic_adapter
from app.embedding.loader import LoadedModel, load_model, resolve_source
from app.embedding.pooling import PoolingStrategy
from app.errors import UnsupportedPooling
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ExecutionTiming:
    """One forward pass: its batch size and how long each phase took."""

    batch_size: int
    compute_input_ns: int  # image processor, copy to the device
    compute_infer_ns: int  # the model's forward
    compute_output_ns: int  # pooling, normalisation, copy back


class Embedder:
    def __init__(self, loaded: LoadedModel, device: torch.device, dtype: torch.dtype, max_batch_size: int):
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.model_id = loaded.source.model_id
        self.model_type = loaded.config.model_type
        # One warm-up forward tells the embedding size and, for unknown families, the rule.
        probe = Image.new("RGB", (64, 64), (128, 128, 128))
        outputs = self._forward(self.preprocess([probe]))
        self.adapter: FamilyAdapter = loaded.adapter or generic_adapter(outputs.last_hidden_state)
        self.embedding_dim = int(self.adapter.pool(outputs, self.adapter.default).shape[-1])

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        source = resolve_source(settings)
        started = time.perf_counter()
        loaded = load_model(source, device, dtype)
        embedder = cls(loaded, device, dtype, settings.max_batch_size)
        log.info(
            "loaded model %s (%s, family %s, %d-d embeddings) from %s on %s as %s in %.1f s",
            source.model_id, embedder.model_type, embedder.adapter.name, embedder.embedding_dim,
            source.origin, device, str(dtype).removeprefix("torch."), time.perf_counter() - started,
        )  # fmt: skip
        return embedder

    @property
    def supported_poolings(self) -> tuple[PoolingStrategy, ...]:
        return self.adapter.supported

    @property
    def default_pooling(self) -> PoolingStrategy:
        return self.adapter.default

    def check_pooling(self, strategy: PoolingStrategy) -> None:
        if strategy not in self.adapter.supported:
            choices = ", ".join(p.value for p in self.adapter.supported)
            raise UnsupportedPooling(
                f"pooling strategy '{strategy.value}' is not supported by {self.model_id} "
                f"({self.model_type}); supported: {choices}"
            )

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def _forward(self, pixel_values: torch.Tensor):
        with torch.inference_mode():
            return self.model(pixel_values=pixel_values.to(self.device, self.dtype))

    def embed(
        self, images: list[Image.Image], strategy: PoolingStrategy, normalize: bool
    ) -> tuple[np.ndarray, list[ExecutionTiming]]:
        """[N, D] float32 embeddings, forwarding at most max_batch_size images at a time."""
        self.check_pooling(strategy)
        pieces = []
        timings = []
        for start in range(0, len(images), self.max_batch_size):
            t0 = time.perf_counter_ns()
            chunk = images[start : start + self.max_batch_size]
            pixel_values = self.preprocess(chunk).to(self.device, self.dtype)
            t1 = time.perf_counter_ns()
            outputs = self._forward(pixel_values)
            t2 = time.perf_counter_ns()
            with torch.inference_mode():
                pooled = self.adapter.pool(outputs, strategy).float()
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            pieces.append(pooled.cpu().numpy())
            timings.append(ExecutionTiming(len(chunk), t1 - t0, t2 - t1, time.perf_counter_ns() - t2))
        return np.concatenate(pieces, axis=0), timings
