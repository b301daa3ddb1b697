"""The inference service: owns the embedder's lifecycle and turns an infer body into a
V2 answer (parse -> fetch and decode concurrently -> embed off the loop -> respond)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from app.embedding.pooling import PoolingStrategy
from app.errors import ImageError, InputError, ModelNotFound, ServiceError, ServiceUnavailable
from app.images.decode import decode_image
from app.images.fetch import ImageFetcher
from app.images.sources import SourceKind, classify, decode_base64, decode_data_uri
from app.inference.response import build_response
from app.inference.spec import IMAGE_INPUT, EmbedRequestSpec, build_spec
from app.inference.stats import ModelStatistics
from app.protocol.encoding import decode_content
from app.protocol.request import parse_infer_body
from app.settings import Settings

log = logging.getLogger(__name__)

MODEL_VERSION = "1"


class DeadlineExceeded(ServiceError):
    status_code = 504


@dataclass
class InferAnswer:
    body: bytes
    header_length: int | None  # set when binary tensor data follows the JSON header
    request_id: str
    image_count: int


class InferenceService:
    def __init__(self, settings: Settings, fetcher: ImageFetcher):
        self.settings = settings
        self.model_name = settings.served_model_name
        self.fetcher = fetcher
        self.embedder = None
        self.load_error: str | None = None
        self.stats = ModelStatistics(self.model_name, MODEL_VERSION)
        # Torch work is confined to one thread: the model is never run concurrently with itself.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    # --- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        try:
            embedder = await asyncio.get_running_loop().run_in_executor(
                self._model_thread, _load_embedder, self.settings
            )
            if self.settings.pooling_strategy is not None:
                embedder.check_pooling(self.settings.pooling_strategy)
            self.embedder = embedder
        except Exception as exc:  # noqa: BLE001 - any load failure leaves the server unready
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)

    def close(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.embedder is not None

    @property
    def broken(self) -> bool:
        return self.load_error is not None

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.model_name:
            raise ModelNotFound(f"unknown model '{name}'; this server serves '{self.model_name}'")
        if version is not None and version != MODEL_VERSION:
            raise ModelNotFound(f"model '{name}' has no version '{version}'; it has version {MODEL_VERSION}")

    def require_ready(self):
        if self.embedder is None:
            state = f"failed to load ({self.load_error})" if self.load_error else "is loading"
            raise ServiceUnavailable(f"model '{self.model_name}' {state}")
        return self.embedder

    @property
    def default_pooling(self) -> PoolingStrategy:
        return self.settings.pooling_strategy or self.require_ready().default_pooling

    # --- inference -------------------------------------------------------------------------

    async def infer(
        self, body: bytes, content_encoding: str | None, header_length: str | None
    ) -> InferAnswer:
        embedder = self.require_ready()
        started = time.perf_counter_ns()
        ok = False
        try:
            raw = decode_content(body, content_encoding, self.settings.max_request_bytes)
            spec = build_spec(parse_infer_body(raw, header_length), self.settings.max_images_per_request)
            coroutine = self._infer(embedder, spec)
            if spec.timeout_us is not None:
                try:
                    answer = await asyncio.wait_for(coroutine, spec.timeout_us / 1e6)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"request did not finish within its timeout of {spec.timeout_us / 1000:g} ms"
                    ) from None
            else:
                answer = await coroutine
            ok = True
            return answer
        finally:
            self.stats.record_request(ok, time.perf_counter_ns() - started)

    async def _infer(self, embedder, spec: EmbedRequestSpec) -> InferAnswer:
        pooling = spec.pooling or self.default_pooling
        embedder.check_pooling(pooling)  # before any download
        normalize = self.settings.normalize_embeddings if spec.normalize is None else spec.normalize
        images = await self.load_images(spec.images)
        submitted = time.perf_counter_ns()

        def run():
            queue_ns = time.perf_counter_ns() - submitted
            embeddings, timings = embedder.embed(images, pooling, normalize)
            self.stats.record_executions(timings, queue_ns)
            return embeddings

        embeddings = await asyncio.get_running_loop().run_in_executor(self._model_thread, run)
        request_id = spec.request_id or str(uuid.uuid4())
        body, header_length = build_response(
            request_id, self.model_name, embedder.model_id, embeddings, spec.outputs
        )
        return InferAnswer(body, header_length, request_id, len(images))

    async def load_images(self, elements: list[str | bytes]) -> list[Image.Image]:
        """Fetch and decode every element concurrently; the first failure (by index) wins."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._load_image(i, e)) for i, e in enumerate(elements)]
        except BaseExceptionGroup as failures:
            raise _first_input_error(failures) from None
        return [task.result() for task in tasks]

    async def _load_image(self, index: int, element: str | bytes) -> Image.Image:
        try:
            data = await self._image_bytes(element)
            return await asyncio.to_thread(decode_image, data, self.settings.max_image_pixels)
        except ImageError as exc:
            raise InputError(IMAGE_INPUT, index, exc.message) from None

    async def _image_bytes(self, element: str | bytes) -> bytes:
        source = classify(element)
        if source.kind is SourceKind.URL:
            return await self.fetcher.fetch(source.value)
        if source.kind is SourceKind.DATA_URI:
            data = decode_data_uri(source.value)
        elif source.kind is SourceKind.BASE64:
            data = decode_base64(source.value)
        else:
            data = source.value
        if len(data) > self.settings.max_image_bytes:
            raise ImageError(
                f"image is {len(data)} bytes, over the {self.settings.max_image_bytes}-byte limit"
            )
        return data


def _load_embedder(settings: Settings):
    # Imported here, in the model thread: importing torch and transformers takes seconds
    # and must not block the event loop while the health routes answer.
    from app.embedding.embedder import Embedder

    return Embedder.from_settings(settings)


def _first_input_error(group: BaseExceptionGroup) -> BaseException:
    leaves = list(_leaves(group))
    input_errors = [e for e in leaves if isinstance(e, InputError)]
    if input_errors:
        return min(input_errors, key=lambda e: e.index)
    return leaves[0]


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
