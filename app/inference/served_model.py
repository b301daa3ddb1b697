"""One served model: its lifecycle (load, batcher, supervision, drain), admission and
overload, readiness, statistics, and one domain entry point, `embed(images, pooling,
normalize, deadline)`, that returns embeddings as an array. It knows nothing of HTTP or
V2 framing (the codec in app/protocol does) and nothing of torch (the runtime backend
behind app/embedding/backend.py does)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.cache.embedding_cache import CacheSession, EmbeddingCache
from app.cache.keys import model_identity
from app.embedding.backend import IMAGE, TEXT, PoolRequest, RuntimeBackend
from app.embedding.fidelity import l2_normalised
from app.embedding.pooling import PoolingStrategy
from app.embedding.preflight import StartupError
from app.embedding.selection import load_backend
from app.errors import BadRequest, ModelNotFound, Overloaded, ServiceError, ServiceUnavailable
from app.inference.batcher import DynamicBatcher, WorkerDied
from app.inference.lifecycle import Lifecycle, Phase
from app.inference.model_thread import ModelHost, OwnThread, run_in_passing_thread
from app.inference.preparation import ImagePreparer
from app.inference.stats import ModelStatistics
from app.metrics import ServiceMetrics
from app.settings.model import ModelSettings
from app.settings.server import ServerSettings

if TYPE_CHECKING:
    from app.embedding.text_tower import TokenizedTexts

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
SUPERVISE_EVERY_S = 0.5


class DeadlineExceeded(ServiceError):
    status_code = 504


@dataclass(frozen=True)
class ServingLimits:
    """The server's limits that every model applies to its requests."""

    request_timeout_s: float = 60.0
    max_images: int = 64
    max_texts: int = 64
    max_queued_inputs: int = 256  # images and texts admitted and not yet answered

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ServingLimits:
        return cls(
            server.request_timeout_s,
            server.max_images_per_request,
            server.max_texts_per_request,
            server.max_queue_images,
        )


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
    text_logits: dict[str, float]  # logit_scale and (SigLIP) logit_bias; empty without text


class ServedModel:
    """One model of the repository, loaded or not: it can be loaded, unloaded and loaded
    again (a repository load, an idle unload, an on-demand reload); its statistics and
    metrics live across loads."""

    def __init__(
        self,
        settings: ModelSettings,
        preparer: ImagePreparer,
        metrics: ServiceMetrics | None = None,
        model_host: ModelHost | None = None,
        loader: Callable[[ModelSettings], RuntimeBackend] = load_backend,
        load_at_startup: bool = True,
        limits: ServingLimits | None = None,
        cache: EmbeddingCache | None = None,
    ):
        self.settings = settings
        self.limits = limits or ServingLimits()
        self.name = settings.served_model_name
        self.version = MODEL_VERSION
        self.preparer = preparer
        self.metrics = metrics or ServiceMetrics()
        self.model_host = model_host or OwnThread()
        self.loader = loader
        self.lifecycle = Lifecycle(load_at_startup)
        self.backend: RuntimeBackend | None = None
        self.cache = cache if cache is not None and cache.enabled else None
        self.cache_identity: str | None = None  # the loaded model's (app/cache/keys.py)
        self.batcher: DynamicBatcher | None = None
        self.last_refused_draining = 0.0  # when the drain began or last refused a request
        self.stats = ModelStatistics(self.name, MODEL_VERSION)
        self.admitted_inputs = 0  # images and texts admitted and not yet answered: the backpressure bound
        self.in_flight = 0  # requests between model lookup and answer: an unload waits for them
        self.awaiting_load = 0  # of those, the ones waiting for an on-demand load: it does not
        self.last_used = time.monotonic()
        self._loading: asyncio.Task | None = None
        self._unload_task: asyncio.Task | None = None
        self._preparing = 0  # requests fetching or decoding: the batcher waits for them
        self._supervisor: asyncio.Task | None = None
        self._waiting = self.metrics.images_waiting.labels(self.name)

    # --- lifecycle: its answers, for the registry and the data plane, which never change it -

    @property
    def load_at_startup(self) -> bool:
        return self.lifecycle.load_at_startup

    @property
    def loading(self) -> bool:
        return self.lifecycle.loading

    @property
    def loaded(self) -> bool:
        return self.lifecycle.loaded_now

    @property
    def unloading(self) -> bool:
        return self.lifecycle.phase is Phase.UNLOADING

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    @property
    def loads_on_demand(self) -> bool:
        return self.lifecycle.loads_on_demand

    @property
    def load_error(self) -> str | None:
        return self.lifecycle.load_error

    @property
    def broken(self) -> bool:
        return self.lifecycle.broken

    def state(self) -> tuple[str, str]:
        """The repository index's state and reason (Triton's names)."""
        return self.lifecycle.triton_state()

    def defer_to_first_request(self) -> None:
        """Not loaded at start-up after all (MAX_LOADED_MODELS): its first request loads it."""
        self.lifecycle.defer_to_first_request()

    def start_loading(self, on_demand: bool = False) -> asyncio.Task:
        """The load in progress, or a new one: concurrent callers share it. A load asked for
        during an unload starts once the unload has finished."""
        if self._loading is None or self._loading.done():
            self._begin_load_if_unloaded(on_demand)
            self._loading = asyncio.create_task(self._load_after_unload(on_demand))
        return self._loading

    async def _load_after_unload(self, on_demand: bool) -> None:
        if self._unload_task is not None and not self._unload_task.done():
            await asyncio.shield(self._unload_task)
            self._begin_load_if_unloaded(on_demand)
        if self.lifecycle.phase is Phase.LOADING:
            await self._load()

    def _begin_load_if_unloaded(self, on_demand: bool) -> None:
        # Loaded already (a concurrent load won) or unloading (the load waits): nothing yet.
        if self.lifecycle.may_begin_load:
            self.lifecycle.begin_load(on_demand)

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            backend = await run_in_passing_thread(lambda: self.loader(self.settings))
            if self.settings.pooling_strategy is not None:
                backend.check_pooling(self.settings.pooling_strategy)
            identity = await asyncio.to_thread(self._identity, backend) if self.cache is not None else None
        except Exception as exc:  # noqa: BLE001 - any load failure leaves the model unready
            # The details (paths, repo ids) go to the log only; clients are told to look there.
            # One line: transformers' messages run over several.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            # A setting that cannot work is the operator's to fix: the index says which.
            self.lifecycle.failed(
                f"{type(exc).__name__}: {first_line}", str(exc) if isinstance(exc, StartupError) else None
            )
            log.error("model '%s' failed to load: %s: %s", self.name, type(exc).__name__, exc)
            return
        self.metrics.load_seconds.labels(self.name).set(time.perf_counter() - started)
        runtime = backend.describe()
        self._info_labels = (
            self.name,
            backend.model_id,
            backend.model_type,
            runtime["device"],
            runtime["dtype"],
        )
        self.metrics.model.labels(*self._info_labels).set(1)
        self.backend = backend
        self.cache_identity = identity
        self.batcher = self._start_batcher(backend)
        self._supervisor = asyncio.create_task(self._supervise(backend))
        self.last_used = time.monotonic()
        self.lifecycle.loaded()
        log.info("model '%s' loaded in %.1f s", self.name, time.perf_counter() - started)

    def _identity(self, backend: RuntimeBackend) -> str | None:
        """The cache identity of the loaded model (its files are read once per process), or
        None: the model is then served without the cache, which is never worth a failed load."""
        from app.embedding.model_source import resolve_source
        from app.embedding.openvino_export import local_folder

        started = time.perf_counter()
        try:
            folder = local_folder(resolve_source(self.settings))
            identity = model_identity(self.settings, folder, backend.describe())
        except Exception as exc:  # noqa: BLE001 - any failure: serve, uncached
            log.warning(
                "model '%s' is served without the embedding cache: %s: %s", self.name, type(exc).__name__, exc
            )
            return None
        log.info(
            "model '%s': cache identity %s (%.1f s)", self.name, identity[:16], time.perf_counter() - started
        )
        return identity

    def _start_batcher(self, backend: RuntimeBackend) -> DynamicBatcher:
        # The batcher's thread runs the model, or hands up to concurrent_batches batches to
        # threads of its own (a backend with several infer requests).
        batcher = DynamicBatcher(
            backend.embed_batch,
            max_batch=backend.max_batch_size,  # RUNTIME=auto may choose a smaller one
            concurrency=backend.concurrent_batches,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            more_expected=lambda: self._preparing > 0,
            on_execution=self._record_execution,
            on_thread_start=backend.adopt_thread,
            is_out_of_memory=backend.is_out_of_memory,
        )
        self.model_host.host(batcher)
        return batcher

    def _record_execution(self, timing, queue_ns: list[int]) -> None:
        self.stats.record_execution(timing, queue_ns)
        self.metrics.record_execution(
            self.name, timing.batch_size, timing.compute_infer_ns + timing.compute_output_ns, queue_ns
        )

    async def _supervise(self, backend: RuntimeBackend) -> None:
        """Restart the inference worker if its thread dies; unready until it runs again."""
        while True:
            await asyncio.sleep(SUPERVISE_EVERY_S)
            if self.batcher is not None and not self.batcher.alive and not self.draining:
                failed = self.batcher.fail_pending(
                    WorkerDied("the inference worker stopped; retry the request")
                )
                log.error("inference worker died (%d queued requests failed): restarting it", failed)
                self.batcher = self._start_batcher(backend)

    @property
    def idle(self) -> bool:
        """Loaded and serving no request: it can be unloaded without failing one."""
        return self.lifecycle.phase is Phase.READY and self.in_flight == 0 and self.admitted_inputs == 0

    async def unload(self, reason: str, loads_on_demand: bool) -> None:
        """Refuse new requests (503), let admitted ones finish, then free the model. The
        unload runs as a task of its own: a caller that is cancelled (a request whose
        deadline passed while it made room) does not stop it halfway, which would leave a
        model that looks loaded with no worker."""
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)
        if self.lifecycle.phase is Phase.READY:
            # From now on: new requests wait for the reload (on demand) or are refused (503).
            self.lifecycle.begin_unload(loads_on_demand)
            self._unload_task = asyncio.create_task(self._unload(reason, loads_on_demand))
        if self._unload_task is not None and not self._unload_task.done():
            await asyncio.shield(self._unload_task)
        if self.lifecycle.phase is Phase.UNLOADED:  # the last caller's reason stands (API after LRU)
            self.lifecycle.unloaded(reason, loads_on_demand)

    async def _unload(self, reason: str, loads_on_demand: bool) -> None:
        try:
            deadline = time.monotonic() + self.limits.request_timeout_s
            # Requests waiting for the reload that follows hold nothing of this model.
            while (
                self.in_flight - self.awaiting_load or self.admitted_inputs
            ) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await self._stop_worker()
            self.metrics.model.remove(*self._info_labels)
            self.backend = None
            self.cache_identity = None
            if self.cache is not None:
                self.cache.forget_model(self.name)
            self.lifecycle.unloaded(reason, loads_on_demand)
            # The weights go now, not at the next collection: the next load needs the memory.
            await asyncio.to_thread(gc.collect)
            log.info("model '%s' unloaded: %s", self.name, reason)
        finally:
            if self.lifecycle.phase is Phase.UNLOADING:  # it failed halfway: still loaded
                self.lifecycle.unload_failed()

    async def _stop_worker(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.stop)
            self.batcher = None

    def start_draining(self) -> None:
        """SIGTERM: readiness turns false and new requests get 503; in-flight ones finish."""
        if not self.draining:
            log.info("draining: refusing new requests, finishing %d admitted inputs", self.admitted_inputs)
            self.last_refused_draining = time.monotonic()
        self.lifecycle.start_draining()

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        await self._stop_worker()

    @property
    def ready(self) -> bool:
        return (
            self.lifecycle.phase is Phase.READY
            and self.batcher is not None
            and self.batcher.alive
            and not self.draining
        )

    def check_version(self, version: str | None) -> None:
        if version is not None and version != self.version:
            raise ModelNotFound(
                f"model '{self.name}' has no version '{version}'; it has version {self.version}"
            )

    def require_loaded(self) -> RuntimeBackend:
        if self.backend is None:
            phase = self.lifecycle.phase
            if phase is Phase.LOADING:
                raise Overloaded(f"model '{self.name}' is loading; retry shortly")
            if phase is Phase.FAILED:
                raise ServiceUnavailable(f"model '{self.name}' failed to load; see the server log")
            raise ServiceUnavailable(
                f"model '{self.name}' is not loaded ({self.lifecycle.reason}); load it with "
                f"POST /v2/repository/models/{self.name}/load"
            )
        return self.backend

    def require_ready(self) -> RuntimeBackend:
        backend = self.require_loaded()
        if self.draining:
            self.last_refused_draining = time.monotonic()  # still routed here: keep draining
            raise ServiceUnavailable("server is shutting down; send the request to another replica")
        if self.unloading:
            raise ServiceUnavailable(f"model '{self.name}' is unloading")
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
            max_images=self.limits.max_images,
            max_texts=self.limits.max_texts,
            modalities=tuple(backend.modalities),
            runtime=backend.describe(),
            text_logits=backend.text_logits,
        )

    # --- inference -------------------------------------------------------------------------

    @contextlib.contextmanager
    def waiting_for_load(self):
        """An in-flight request waiting for this model's on-demand load (after the unload in
        progress, if one is): the unload does not wait for it."""
        self.awaiting_load += 1
        try:
            yield
        finally:
            self.awaiting_load -= 1

    @contextlib.contextmanager
    def counting_request(self):
        """Counts one inference request (success or failure, and its time) in the statistics,
        whatever stage it fails at, decoding of the request included."""
        started = time.perf_counter_ns()
        ok = False
        self.in_flight += 1
        self.last_used = time.monotonic()
        try:
            yield
            ok = True
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()
            self.stats.record_request(ok, time.perf_counter_ns() - started)

    async def embed(
        self,
        images: Sequence[str | bytes],
        pooling: PoolingStrategy | None = None,
        normalize: bool | None = None,
        deadline_s: float | None = None,
        cache: bool = True,
    ) -> np.ndarray:
        """[N, D] float32 embeddings of the images (URLs, data URIs, base64 or file bytes);
        pooling and normalize default to the model's settings, the deadline to
        REQUEST_TIMEOUT_S; `cache=False` neither reads nor writes the embedding cache."""
        backend = self.require_ready()
        work = self._embed_images(backend, images, pooling, normalize, cache)
        return await self._admitted(len(images), deadline_s, work, self.metrics.images)

    async def embed_texts(
        self,
        texts: list[str],
        pooling: PoolingStrategy | None = None,
        normalize: bool | None = None,
        deadline_s: float | None = None,
        cache: bool = True,
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
        pooling = backend.default_pooling

        async def run():
            tokenized = await asyncio.to_thread(backend.tokenize, texts)
            session = self._cache_session(backend, TEXT, pooling, cache)
            if session is None:
                return await self._submit(
                    tokenized.tokens, PoolRequest(len(texts), pooling, normalize, TEXT)
                ), tokenized

            def compute(indices: list[int]) -> Awaitable[np.ndarray]:
                return self._submit(
                    tokenized.tokens[indices], PoolRequest(len(indices), pooling, False, TEXT)
                )

            with session:
                answered = await session.consult_all([hashlib.sha256(t.encode()).digest() for t in texts])
                todo = [i for i in range(len(texts)) if i not in answered]
                rows = await session.assemble(len(texts), todo, answered, lambda: compute(todo), compute)
            return (l2_normalised(rows) if normalize else rows), tokenized

        return await self._admitted(len(texts), deadline_s, run(), self.metrics.texts)

    async def _admitted(self, count: int, deadline_s: float | None, work, counter):
        """Run `work` (a coroutine) as `count` admitted inputs, within the deadline."""
        if self.admitted_inputs + count > self.limits.max_queued_inputs:
            work.close()
            raise Overloaded(
                f"server is at capacity ({self.admitted_inputs} inputs waiting, limit "
                f"{self.limits.max_queued_inputs}); retry shortly"
            )
        deadline_s = deadline_s or self.limits.request_timeout_s
        self.admitted_inputs += count
        self._waiting.inc(count)
        try:
            # A request whose deadline passes while it waits is cancelled: its queued work
            # is skipped by the batcher, never computed.
            result = await asyncio.wait_for(work, deadline_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"request did not finish within its timeout of {deadline_s * 1000:g} ms"
            ) from None
        finally:
            self.admitted_inputs -= count
            self._waiting.dec(count)
        counter.labels(self.name).inc(count)
        return result

    async def _embed_images(
        self,
        backend: RuntimeBackend,
        images: Sequence[str | bytes],
        pooling: PoolingStrategy | None,
        normalize: bool | None,
        cache: bool,
    ) -> np.ndarray:
        pooling = pooling or self.default_pooling
        backend.check_pooling(pooling)  # before any download
        normalize = self.settings.normalize_embeddings if normalize is None else normalize
        session = self._cache_session(backend, IMAGE, pooling, cache)
        if session is None:
            pixels = (await self._prepare(images, backend, None)).pixels
            assert pixels is not None  # every image was decoded
            return await self._submit(pixels, PoolRequest(len(images), pooling, normalize))

        async def again(indices: list[int]) -> np.ndarray:
            pixels = (await self._prepare([images[i] for i in indices], backend, None)).pixels
            return await self._submit(pixels, PoolRequest(len(indices), pooling, False))

        with session:
            prepared = await self._prepare(images, backend, session)

            def first() -> Awaitable[np.ndarray]:
                return self._submit(prepared.pixels, PoolRequest(len(prepared.decoded), pooling, False))

            rows = await session.assemble(len(images), prepared.decoded, prepared.answered, first, again)
        return l2_normalised(rows) if normalize else rows

    async def _prepare(self, images: Sequence[str | bytes], backend: RuntimeBackend, session):
        self._preparing += 1
        started = time.perf_counter()
        try:
            return await self.preparer.prepare(
                images, backend.preprocessor, session.consult if session is not None else None
            )
        finally:
            self._preparing -= 1
            self.metrics.preprocess_seconds.labels(self.name).observe(time.perf_counter() - started)

    def _cache_session(
        self, backend: RuntimeBackend, modality: str, pooling: PoolingStrategy, wanted: bool
    ) -> CacheSession | None:
        if not wanted or self.cache is None or self.cache_identity is None:
            return None
        return self.cache.session(
            self.name, self.cache_identity, modality, pooling, backend.embedding_dim, self.stats
        )

    async def _submit(self, inputs: np.ndarray, request: PoolRequest) -> np.ndarray:
        # An unload that waited REQUEST_TIMEOUT_S for this request may have stopped the
        # worker while the request was still fetching or decoding.
        batcher = self.batcher
        if batcher is None:
            raise ServiceUnavailable(
                f"model '{self.name}' was unloaded while the request was prepared; retry"
            )
        return await batcher.submit(inputs, request)
