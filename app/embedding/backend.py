"""The runtime backend interface: what the serving side (batcher, served model) needs from
whatever runs the model. Images cross the seam as numpy float32 arrays [n, 3, H, W] (SigLIP 2
NaFlex: [n, 1 + patches, values per patch], see naflex.py) and
embeddings come back as numpy float32 rows, so the serving side imports no runtime (no
torch here either). This module imports no backend: `TorchBackend` (torch_backend.py) and
`OpenVinoBackend` (openvino_backend.py) implement it, and selection.py picks one. A third
runtime is a class that fits `RuntimeBackend` (mypy checks it, see selection.py) and one
branch in selection.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from app.embedding.fidelity import l2_normalised
from app.embedding.pooling import PoolingStrategy

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class PoolRequest:
    """One request's share of a batch: its input count, how it wants them pooled, and
    which tower they go through. A batch holds one modality only."""

    count: int
    strategy: PoolingStrategy
    normalize: bool
    modality: str = IMAGE  # text: inputs are int64 [n, 2, L] tokens (ids, attention mask)


@dataclass
class ExecutionTiming:
    """One forward pass: its batch size and how long each phase took."""

    batch_size: int
    compute_input_ns: int  # stacking and padding the batch (preprocessing: see the batcher)
    compute_infer_ns: int  # the model's forward
    compute_output_ns: int  # pooling, normalisation, copy back


class ImagePreprocessor(Protocol):
    """One decoded RGB image -> the model's input [3, H, W] float32. Runs in the decoding
    threads, so it must not start a runtime's own thread pool."""

    # Read-only properties: a class attribute or an instance attribute fits either.
    @property
    def fast(self) -> bool: ...

    @property
    def draft_min_side(self) -> int | None:
        """Decode JPEGs at a reduced scale down to this side, or None."""

    def __call__(self, image: Image.Image) -> np.ndarray: ...

    def batch_inputs(self, stacked: np.ndarray) -> np.ndarray:
        """The stacked images as the model takes them (a NaFlex batch is cut to its longest
        image's patches; other models take them as they are)."""


class RuntimeBackend(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def model_type(self) -> str: ...

    @property
    def embedding_dim(self) -> int: ...

    @property
    def max_batch_size(self) -> int: ...

    @property
    def preprocessor(self) -> ImagePreprocessor: ...

    @property
    def modalities(self) -> tuple[str, ...]:
        """IMAGE, and TEXT for a model with a text tower (CLIP, SigLIP full models)."""

    @property
    def concurrent_batches(self) -> int:
        """Batches the backend runs at once: 1 (torch, on the model thread) or more
        (OpenVINO's infer requests; embed_batch is then called from that many threads)."""

    @property
    def supported_poolings(self) -> tuple[PoolingStrategy, ...]: ...

    @property
    def default_pooling(self) -> PoolingStrategy: ...

    def check_pooling(self, strategy: PoolingStrategy) -> None:
        """Raise UnsupportedPooling (400) for a strategy this model cannot do."""

    def check_text(self) -> None:
        """Raise BadRequest (400), saying why, when this model cannot embed text."""

    @property
    def text_logits(self) -> dict[str, float]:
        """The model's image-text logit scale (exponentiated) and, for SigLIP, bias:
        logits = logit_scale * cosine + logit_bias. Empty without a text tower."""

    def tokenize(self, texts: list[str]):
        """TokenizedTexts (app/embedding/text_tower.py) for the text tower; thread-safe."""

    def adopt_thread(self) -> None:
        """Called once by the thread that will run every forward pass."""

    def embed_batch(
        self, pixels: np.ndarray, requests: list[PoolRequest]
    ) -> tuple[list[np.ndarray], ExecutionTiming]:
        """One forward pass over the requests' inputs (stacked in order: images [n, *input
        shape] float32, or text tokens); each request gets its own rows, pooled and normalised its
        own way."""

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether `exc` from embed_batch means the batch was too large for the device."""

    def describe(self) -> dict[str, str]:
        """What runs the model, for metadata and metrics: platform, family, device, dtype."""


def split_rows(pooled: list[np.ndarray], requests: list[PoolRequest]) -> list[np.ndarray]:
    """Each request's rows of the batch, from `pooled[i]` (the batch pooled its way for
    `requests[i]`), L2-normalised if it asked."""
    results, row = [], 0
    for rows, request in zip(pooled, requests, strict=True):
        rows = rows[row : row + request.count]
        results.append(l2_normalised(rows) if request.normalize else rows)
        row += request.count
    return results


def embed_images(
    backend: RuntimeBackend, images: list[Image.Image], strategy: PoolingStrategy, normalize: bool
) -> tuple[np.ndarray, list[ExecutionTiming]]:
    """[N, D] float32 embeddings of PIL images through `backend`, max_batch_size per forward
    pass, without a batcher (tools, benchmarks and tests)."""
    backend.check_pooling(strategy)
    pieces, timings = [], []
    for start in range(0, len(images), backend.max_batch_size):
        chunk = images[start : start + backend.max_batch_size]
        pixels = np.stack([backend.preprocessor(image) for image in chunk])
        [rows], timing = backend.embed_batch(pixels, [PoolRequest(len(chunk), strategy, normalize)])
        pieces.append(rows)
        timings.append(timing)
    return np.concatenate(pieces, axis=0), timings
