"""The embedding stage: a Ray actor holding the server's runtime backend (torch, OpenVINO
float32 or int8, loaded by the same `load_backend` from the same ModelSettings), fed
batches of decoded pixels by Ray Data's actor pool."""

from __future__ import annotations

import numpy as np

from app.batch.decode import OK
from app.embedding.backend import PoolRequest
from app.embedding.pooling import PoolingStrategy
from app.settings.model import ModelSettings

NOT_FINITE = "the model answered a NaN or infinite embedding"


class EmbeddingActor:
    """One model copy. Ray Data calls it with batches of MAX_BATCH_SIZE rows or fewer; the
    pooling was checked against the same settings' model by the driver (plan_model)."""

    def __init__(self, settings: ModelSettings, pooling: PoolingStrategy, normalize: bool):
        from app.embedding.selection import load_backend

        self.backend = load_backend(settings)
        self.backend.adopt_thread()
        self.request = (pooling, normalize)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{id, source, pixels, error} -> {id, source, embedding [n, D], error}."""
        errors = np.array(batch["error"], dtype=object)
        decoded = np.flatnonzero(errors == OK)
        embeddings = np.zeros((len(errors), self.backend.embedding_dim), dtype=np.float32)
        if len(decoded):
            pixels = np.ascontiguousarray(batch["pixels"][decoded])  # a copy: the batch is read-only
            [rows], _ = self.backend.embed_batch(pixels, [PoolRequest(len(decoded), *self.request)])
            embeddings[decoded] = rows
            errors[decoded[~np.isfinite(rows).all(axis=1)]] = NOT_FINITE
        return {"id": batch["id"], "source": batch["source"], "embedding": embeddings, "error": errors}
