"""The inference service: owns the model's lifecycle (load, batcher, supervision, drain)
and turns an infer body into a V2 answer: parse -> admit -> prepare images -> batch ->
respond."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from app.embedding.embedder import Embedder, PoolRequest
from app.embedding.pooling import PoolingStrategy
from app.errors import ModelNotFound, Overloaded, ServiceError, ServiceUnavailable
from app.images.fetch import ImageFetcher
from app.inference.batcher import DynamicBatcher, WorkerDied
from app.inference.budgets import ByteBudget, Reservation
from app.inference.model_thread import ModelHost, OwnThread, run_in_passing_thread
from app.inference.preparation import ImagePreparer
from app.inference.response import build_response
from app.inference.spec import EmbedRequestSpec, build_spec, input_admission, max_json_values
from app.inference.stats import ModelStatistics
from app.metrics import ServiceMetrics
from app.protocol.encoding import decode_content, inflated_size_limit, is_encoded
from app.protocol.request import parse_infer_body
from app.request_ids import safe_request_id
from app.settings import Settings

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
SUPERVISE_EVERY_S = 0.5
# Bodies past this size (or compressed) are inflated and parsed in a thread: tens of
# milliseconds of work that would otherwise stall every other request and the probes.
PARSE_ON_LOOP_BYTES = 256 * 1024


class DeadlineExceeded(ServiceError):
    status_code = 504


@dataclass
class InferAnswer:
    body: bytes
    header_length: int | None  # set when binary tensor data follows the JSON header


@dataclass
class RequestContext:
    """What the HTTP layer logs about a request, filled in as the service learns it."""

    request_id: str  # X-Request-ID or generated; a safe V2 `id` replaces it
    image_count: int | None = None
    # The body bytes this request holds of the server's in-flight budget.
    body: Reservation | None = None


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        fetcher: ImageFetcher,
        metrics: ServiceMetrics | None = None,
        model_host: ModelHost | None = None,
    ):
        self.settings = settings
        self.model_host = model_host or OwnThread()
        self.metrics = metrics or ServiceMetrics()
        self.metrics.images_waiting.set_function(lambda: self.admitted_images)
        self.model_name = settings.served_model_name
        self.fetcher = fetcher
        self.preparer = ImagePreparer(settings, fetcher)
        self.embedder: Embedder | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None
        self.draining = False
        self.stats = ModelStatistics(self.model_name, MODEL_VERSION)
        self.admitted_images = 0  # admitted and not yet answered: the backpressure bound
        self.body_bytes = ByteBudget(
            settings.max_request_bytes_in_flight, "request bodies", "MAX_REQUEST_BYTES_IN_FLIGHT"
        )
        self._preparing = 0  # requests fetching or decoding: the batcher waits for them
        self._supervisor: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        started = time.perf_counter()
        try:
            embedder = await run_in_passing_thread(lambda: Embedder.from_settings(self.settings))
            if self.settings.pooling_strategy is not None:
                embedder.check_pooling(self.settings.pooling_strategy)
        except Exception as exc:  # noqa: BLE001 - any load failure leaves the server unready
            # The details (paths, repo ids) go to the log only; clients are told to look there.
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            return
        self.metrics.load_seconds.set(time.perf_counter() - started)
        self.metrics.model.info(
            {"model": self.model_name, "model_id": embedder.model_id, "model_type": embedder.model_type,
             "device": str(embedder.device), "dtype": str(embedder.dtype).removeprefix("torch.")}
        )  # fmt: skip
        self.embedder = embedder
        self.batcher = self._start_batcher()
        self._supervisor = asyncio.create_task(self._supervise())

    def _start_batcher(self) -> DynamicBatcher:
        # The batcher's thread is the only one that runs the model.
        batcher = DynamicBatcher(
            self.embedder.embed_pixels,
            max_batch=self.settings.max_batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            more_expected=lambda: self._preparing > 0,
            on_execution=self._record_execution,
            on_thread_start=self.embedder.adopt_thread,
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
        self.preparer.close()

    @property
    def ready(self) -> bool:
        return (
            self.embedder is not None
            and self.batcher is not None
            and self.batcher.alive
            and not self.draining
        )

    @property
    def broken(self) -> bool:
        return self.load_error is not None

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.model_name:
            raise ModelNotFound(f"unknown model '{name}'; this server serves '{self.model_name}'")
        if version is not None and version != MODEL_VERSION:
            raise ModelNotFound(f"model '{name}' has no version '{version}'; it has version {MODEL_VERSION}")

    def require_loaded(self) -> Embedder:
        if self.embedder is None:
            state = "failed to load; see the server log" if self.load_error else "is loading"
            raise ServiceUnavailable(f"model '{self.model_name}' {state}")
        return self.embedder

    def require_ready(self) -> Embedder:
        embedder = self.require_loaded()
        if self.draining:
            raise ServiceUnavailable("server is shutting down; send the request to another replica")
        if not self.ready:
            raise ServiceUnavailable("inference worker is restarting; retry the request")
        return embedder

    @property
    def default_pooling(self) -> PoolingStrategy:
        return self.settings.pooling_strategy or self.require_loaded().default_pooling

    # --- inference -------------------------------------------------------------------------

    async def infer(
        self, body: bytes, content_encoding: str | None, header_length: str | None, context: RequestContext
    ) -> InferAnswer:
        embedder = self.require_ready()
        started = time.perf_counter_ns()
        ok = False
        try:
            spec = await self._parse(body, content_encoding, header_length, context.body)
            count = context.image_count = len(spec.images)
            # A client's id is used only when safe for headers and logs; the answer's `id`
            # says which one was used.
            context.request_id = safe_request_id(spec.request_id) or context.request_id
            if self.admitted_images + count > self.settings.max_queue_images:
                raise Overloaded(
                    f"server is at capacity ({self.admitted_images} images waiting, limit "
                    f"{self.settings.max_queue_images}); retry shortly"
                )
            deadline_s = spec.timeout_us / 1e6 if spec.timeout_us else self.settings.request_timeout_s
            self.admitted_images += count
            try:
                # A request whose deadline passes while it waits is cancelled: its queued
                # work is skipped by the batcher, never computed.
                answer = await asyncio.wait_for(self._infer(embedder, spec, context.request_id), deadline_s)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"request did not finish within its timeout of {deadline_s * 1000:g} ms"
                ) from None
            finally:
                self.admitted_images -= count
            ok = True
            self.metrics.images.inc(count)
            return answer
        finally:
            self.stats.record_request(ok, time.perf_counter_ns() - started)

    async def _parse(
        self, body: bytes, encoding: str | None, header_length: str | None, reservation: Reservation | None
    ) -> EmbedRequestSpec:
        settings = self.settings
        max_images = settings.max_images_per_request

        def parse() -> tuple[EmbedRequestSpec, int]:
            raw = decode_content(body, encoding, settings.max_request_bytes, settings.max_inflation_ratio)
            parsed = parse_infer_body(raw, header_length, input_admission(max_images), max_json_values(max_images))
            return build_spec(parsed, max_images), len(raw)

        if not is_encoded(encoding) and len(body) <= PARSE_ON_LOOP_BYTES:
            return parse()[0]
        inflated_bound = 0
        if reservation is not None and is_encoded(encoding):
            # Reserve the most the body may inflate to before inflating it; keep what it did.
            inflated_bound = inflated_size_limit(len(body), settings.max_request_bytes, settings.max_inflation_ratio)
            reservation.grow(inflated_bound)
        spec, inflated = await asyncio.to_thread(parse)
        if inflated_bound:
            reservation.shrink(inflated_bound - inflated)
        return spec

    async def _infer(self, embedder: Embedder, spec: EmbedRequestSpec, request_id: str) -> InferAnswer:
        pooling = spec.pooling or self.default_pooling
        embedder.check_pooling(pooling)  # before any download
        normalize = self.settings.normalize_embeddings if spec.normalize is None else spec.normalize
        self._preparing += 1
        started = time.perf_counter()
        try:
            pixels = await self.preparer.prepare(spec.images, embedder.preprocessor)
        finally:
            self._preparing -= 1
        self.metrics.preprocess_seconds.observe(time.perf_counter() - started)
        embeddings = await self.batcher.submit(pixels, PoolRequest(len(spec.images), pooling, normalize))
        body, header_length = build_response(
            request_id, self.model_name, embedder.model_id, embeddings, spec.outputs
        )
        return InferAnswer(body, header_length)
