"""One served model: its lifecycle (load, batcher, supervision, drain), admission and
overload, readiness, statistics, and one domain entry point, `embed(images, pooling,
normalize, deadline)`, that returns embeddings as an array. It knows nothing of HTTP or
V2 framing (the codec in app/protocol does) and nothing of torch (the runtime backend
behind app/embedding/backend.py does)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.embedding.backend import TEXT, PoolRequest, RuntimeBackend, load_backend
from app.embedding.pooling import PoolingStrategy
from app.errors import BadRequest, ModelNotFound, Overloaded, ServiceError, ServiceUnavailable
from app.inference.batcher import DynamicBatcher, WorkerDied
from app.inference.model_thread import ModelHost, OwnThread, run_in_passing_thread
from app.inference.preparation import ImagePreparer
from app.inference.stats import ModelStatistics
from app.metrics import ServiceMetrics
from app.settings import Settings

if TYPE_CHECKING:
    from app.embedding.text_tower import TokenizedTexts

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
SUPERVISE_EVERY_S = 0.5


class DeadlineExceeded(ServiceError):
    status_code = 504


@dataclass(frozen=True)
class ModelDescription:
    """What a served model is, for metadata in any protocol."""

    name: str
    versions: tuple[str, ...]
    model_id: str
    model_type: str
    embedding_dim: int
    poolings: tuple[PoolingStrategy, ...]
    default_pooling: PoolingStrategy
    normalize_default: bool
    max_images: int
    max_texts: int
    modalities: tuple[str, ...]  # image, and text for a model with its text tower
    runtime: dict[str, str]  # platform, family, device, dtype (RuntimeBackend.describe)


class ServedModel:
    def __init__(
        self,
        settings: Settings,
        preparer: ImagePreparer,
        metrics: ServiceMetrics | None = None,
        model_host: ModelHost | None = None,
        loader: Callable[[Settings], RuntimeBackend] = load_backend,
    ):
        self.settings = settings
        self.name = settings.served_model_name
        self.version = MODEL_VERSION
        self.preparer = preparer
        self.metrics = metrics or ServiceMetrics()
        self.metrics.images_waiting.set_function(lambda: self.admitted_images)
        self.model_host = model_host or OwnThread()
        self.loader = loader
        self.backend: RuntimeBackend | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None
        self.draining = False
        self.stats = ModelStatistics(self.name, MODEL_VERSION)
        self.admitted_images = 0  # admitted and not yet answered: the backpressure bound
        self._preparing = 0  # requests fetching or decoding: the batcher waits for them
        self._supervisor: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        started = time.perf_counter()
        try:
            backend = await run_in_passing_thread(lambda: self.loader(self.settings))
            if self.settings.pooling_strategy is not None:
                backend.check_pooling(self.settings.pooling_strategy)
        except Exception as exc:  # noqa: BLE001 - any load failure leaves the server unready
            # The details (paths, repo ids) go to the log only; clients are told to look there.
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            return
        self.metrics.load_seconds.set(time.perf_counter() - started)
        runtime = backend.describe()
        self.metrics.model.info(
            {"model": self.name, "model_id": backend.model_id, "model_type": backend.model_type,
             "device": runtime["device"], "dtype": runtime["dtype"]}
        )  # fmt: skip
        self.backend = backend
        self.batcher = self._start_batcher()
        self._supervisor = asyncio.create_task(self._supervise())

    def _start_batcher(self) -> DynamicBatcher:
        # The batcher's thread runs the model, or hands up to concurrent_batches batches to
        # threads of its own (a backend with several infer requests).
        batcher = DynamicBatcher(
            self.backend.embed_batch,
            max_batch=self.settings.max_batch_size,
            concurrency=self.backend.concurrent_batches,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            more_expected=lambda: self._preparing > 0,
            on_execution=self._record_execution,
            on_thread_start=self.backend.adopt_thread,
            is_out_of_memory=self.backend.is_out_of_memory,
        )
        self.model_host.host(batcher)
        return batcher

    def _record_execution(self, timing, queue_ns: list[int]) -> None:
        self.stats.record_execution(timing, queue_ns)
        self.metrics.record_execution(
            timing.batch_size, timing.compute_infer_ns + timing.compute_output_ns, queue_ns
        )

    async def _supervise(self) -> None:
        """Restart the inference worker if its thread dies; unready until it runs again."""
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            if self.batcher is not None and not self.batcher.alive and not self.draining:
                failed = self.batcher.fail_pending(
                    WorkerDied("the inference worker stopped; retry the request")
                )
                log.error("inference worker died (%d queued requests failed): restarting it", failed)
                self.batcher = self._start_batcher()

    def start_draining(self) -> None:
        """SIGTERM: readiness turns false and new requests get 503; in-flight ones finish."""
        if not self.draining:
            log.info("draining: refusing new requests, finishing %d admitted images", self.admitted_images)
        self.draining = True

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.stop)

    @property
    def ready(self) -> bool:
        return (
            self.backend is not None
            and self.batcher is not None
            and self.batcher.alive
            and not self.draining
        )

    @property
    def broken(self) -> bool:
        return self.load_error is not None

    def check_version(self, version: str | None) -> None:
        if version is not None and version != self.version:
            raise ModelNotFound(
                f"model '{self.name}' has no version '{version}'; it has version {self.version}"
            )

    def require_loaded(self) -> RuntimeBackend:
        if self.backend is None:
            state = "failed to load; see the server log" if self.load_error else "is loading"
            raise ServiceUnavailable(f"model '{self.name}' {state}")
        return self.backend

    def require_ready(self) -> RuntimeBackend:
        backend = self.require_loaded()
        if self.draining:
            raise ServiceUnavailable("server is shutting down; send the request to another replica")
        if not self.ready:
            raise ServiceUnavailable("inference worker is restarting; retry the request")
        return backend

    @property
    def model_id(self) -> str:
        return self.require_loaded().model_id

    @property
    def default_pooling(self) -> PoolingStrategy:
        return self.settings.pooling_strategy or self.require_loaded().default_pooling

    def describe(self) -> ModelDescription:
        backend = self.require_loaded()
        return ModelDescription(
            name=self.name,
            versions=(self.version,),
            model_id=backend.model_id,
            model_type=backend.model_type,
            embedding_dim=backend.embedding_dim,
            poolings=tuple(backend.supported_poolings),
            default_pooling=self.default_pooling,
            normalize_default=self.settings.normalize_embeddings,
            max_images=self.settings.max_images_per_request,
            max_texts=self.settings.max_texts_per_request,
            modalities=tuple(backend.modalities),
            runtime=backend.describe(),
        )

    # --- inference -------------------------------------------------------------------------

    @contextlib.contextmanager
    def counting_request(self):
        """Counts one inference request (success or failure, and its time) in the statistics,
        whatever stage it fails at, decoding of the request included."""
        started = time.perf_counter_ns()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.stats.record_request(ok, time.perf_counter_ns() - started)

    async def embed(
        self,
        images: list[str | bytes],
        pooling: PoolingStrategy | None = None,
        normalize: bool | None = None,
        deadline_s: float | None = None,
    ) -> np.ndarray:
        """[N, D] float32 embeddings of the images (URLs, data URIs, base64 or file bytes);
        pooling and normalize default to the model's settings, the deadline to
        REQUEST_TIMEOUT_S."""
        backend = self.require_ready()
        work = self._embed_images(backend, images, pooling, normalize)
        return await self._admitted(len(images), deadline_s, work, self.metrics.images)

    async def embed_texts(
        self,
        texts: list[str],
        pooling: PoolingStrategy | None = None,
        normalize: bool | None = None,
        deadline_s: float | None = None,
    ) -> tuple[np.ndarray, TokenizedTexts]:
        """[N, D] float32 text embeddings in the image embeddings' joint space (a CLIP or
        SigLIP model with its text tower), and how the texts were tokenized. Batched across
        requests on the model thread, like images (one modality per forward pass)."""
        backend = self.require_ready()
        backend.check_text()
        if pooling is not None and pooling != backend.default_pooling:
            raise BadRequest(
                f"input 'pooling_strategy' '{pooling.value}' applies to images; a text embedding is "
                "the model's own text feature (the joint space has no other pooling)"
            )
        normalize = self.settings.normalize_embeddings if normalize is None else normalize

        async def run():
            tokenized = await asyncio.to_thread(backend.tokenize, texts)
            request = PoolRequest(len(texts), backend.default_pooling, normalize, TEXT)
            return await self.batcher.submit(tokenized.tokens, request), tokenized

        return await self._admitted(len(texts), deadline_s, run(), self.metrics.texts)

    async def _admitted(self, count: int, deadline_s: float | None, work, counter):
        """Run `work` (a coroutine) as `count` admitted inputs, within the deadline."""
        if self.admitted_images + count > self.settings.max_queue_images:
            work.close()
            raise Overloaded(
                f"server is at capacity ({self.admitted_images} inputs waiting, limit "
                f"{self.settings.max_queue_images}); retry shortly"
            )
        deadline_s = deadline_s or self.settings.request_timeout_s
        self.admitted_images += count
        try:
            # A request whose deadline passes while it waits is cancelled: its queued work
            # is skipped by the batcher, never computed.
            result = await asyncio.wait_for(work, deadline_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"request did not finish within its timeout of {deadline_s * 1000:g} ms"
            ) from None
        finally:
            self.admitted_images -= count
        counter.inc(count)
        return result

    async def _embed_images(
        self, backend: RuntimeBackend, images: list, pooling: PoolingStrategy | None, normalize: bool | None
    ) -> np.ndarray:
        pooling = pooling or self.default_pooling
        backend.check_pooling(pooling)  # before any download
        normalize = self.settings.normalize_embeddings if normalize is None else normalize
        self._preparing += 1
        started = time.perf_counter()
        try:
            pixels = await self.preparer.prepare(images, backend.preprocessor)
        finally:
            self._preparing -= 1
        self.metrics.preprocess_seconds.observe(time.perf_counter() - started)
        return await self.batcher.submit(pixels, PoolRequest(len(images), pooling, normalize))
