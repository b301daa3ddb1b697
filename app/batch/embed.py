"""The embedding stage: a Ray actor holding the server's runtime backend (torch, OpenVINO
float32 or int8, loaded by the same `load_backend` from the same ModelSettings), fed
batches by Ray Data's actor pool: decoded pixels (EmbeddingActor, behind decoding tasks),
or the rows' sources, decoded in the actor's own threads while its model runs
(DecodingEmbeddingActor)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.batch.decode import OK, decode_source, fetch_urls
from app.cpus import usable_cpus
from app.embedding.backend import PoolRequest
from app.embedding.pooling import PoolingStrategy
from app.images.decode import set_pillow_pixel_limit
from app.settings.model import ModelSettings
from app.settings.server import ServerSettings

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
            embeddings[decoded] = self._embed(pixels, decoded, errors)
        return {"id": batch["id"], "source": batch["source"], "embedding": embeddings, "error": errors}

    def _embed(self, pixels: np.ndarray, rows: np.ndarray, errors: np.ndarray) -> np.ndarray:
        """One forward pass of `pixels` (the batch's `rows`); a row the model answered with a
        NaN or infinity gets that error."""
        [embeddings], _ = self.backend.embed_batch(pixels, [PoolRequest(len(rows), *self.request)])
        errors[rows[~np.isfinite(embeddings).all(axis=1)]] = NOT_FINITE
        return embeddings


class DecodingEmbeddingActor(EmbeddingActor):
    """A model copy that decodes its own rows: a pool of threads decodes (Pillow and numpy
    release the GIL) while this thread runs forward passes of MAX_BATCH_SIZE, the server's
    own structure. On CPU nodes this beats decoding tasks: the decoded pixels (600 KB of
    float32 for a 224x224 model) never cross the object store, and the node's cores are
    shared by one process's threads instead of split between processes by Ray's CPU count."""

    def __init__(
        self, settings: ModelSettings, pooling: PoolingStrategy, normalize: bool, server: ServerSettings
    ):
        super().__init__(settings, pooling, normalize)
        self.server = server
        set_pillow_pixel_limit(server.max_image_pixels)
        self.decoding = ThreadPoolExecutor(settings.torch_threads or usable_cpus(), "decode")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{id, source} -> {id, source, embedding [n, D], error ("" if embedded)}."""
        sources = [str(s) for s in batch["source"]]
        fetched = fetch_urls(sources, self.server)
        preprocessor = self.backend.preprocessor
        # Every row queued at once: the threads decode the next forward's rows during this one.
        pending = [
            self.decoding.submit(decode_source, source, fetched, preprocessor, self.server)
            for source in sources
        ]
        errors = np.full(len(sources), OK, dtype=object)
        embeddings = np.zeros((len(sources), self.backend.embedding_dim), dtype=np.float32)
        size = self.backend.max_batch_size
        for start in range(0, len(pending), size):
            decoded = [job.result() for job in pending[start : start + size]]
            rows = []
            for row, result in enumerate(decoded, start):
                if isinstance(result, str):
                    errors[row] = result
                else:
                    rows.append(row)
            if rows:
                pixels = np.stack([decoded[row - start] for row in rows])
                embeddings[rows] = self._embed(pixels, np.array(rows), errors)
        return {"id": batch["id"], "source": batch["source"], "embedding": embeddings, "error": errors}
