"""Turn a request's `image` elements into one stacked input array: fetch URLs, decode
inline data, decode and preprocess in threads (overlapping other requests' forward passes).

Each image is opened (header only) first; its decoded pixels are then reserved from a
budget shared by every request, and only then decoded: however many large images arrive
at once, the pixels held in memory stay under MAX_DECODING_PIXELS.

With the embedding cache, each image's bytes (as received: after base64 or the URL fetch)
are hashed while it is opened, and the cache is consulted before decoding: an image it
answers is never decoded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.errors import BadRequest, ImageError, InputError, Overloaded
from app.images.decode import finish_decoding, open_image
from app.images.fetch import ImageFetcher
from app.images.sources import ImageSource, SourceKind, classify, decode_base64, decode_data_uri
from app.inference.budgets import WeightedSemaphore
from app.inference.decode_threads import decode_executor
from app.settings.server import ServerSettings

# Errors name the V2 input the elements came from.
IMAGE_INPUT = "image"

# (element index, sha256 of its bytes) -> an answer that replaces decoding it, or None.
Consult = Callable[[int, bytes], Awaitable[Any]]


@dataclass
class PreparedImages:
    pixels: np.ndarray | None  # the decoded elements' inputs, stacked; None if none was decoded
    decoded: list[int]  # their element indices, in order
    answered: dict[int, Any]  # the others: what `consult` answered for them


class ImagePreparer:
    def __init__(self, settings: ServerSettings, fetcher: ImageFetcher):
        self.settings = settings
        self.fetcher = fetcher
        self._threads = decode_executor()
        self.pixel_budget = WeightedSemaphore(settings.max_decoding_pixels)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._threads, function, *args)

    async def prepare(
        self, elements: Sequence[str | bytes], preprocessor, consult: Consult | None = None
    ) -> PreparedImages:
        """All elements concurrently, within the request's fetch budget; the first failure
        (by element index) fails the request and cancels the rest. `consult` (the cache)
        may answer an element from its bytes' digest instead of it being decoded."""
        budget = self.settings.fetch_total_timeout_s
        waiting = _BudgetWait()
        try:
            async with asyncio.timeout(budget), asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._prepare_one(i, e, preprocessor, waiting, consult))
                    for i, e in enumerate(elements)
                ]
        except TimeoutError:
            if waiting.stalled:  # the server's memory bound held it up, not the request
                raise Overloaded(
                    f"server is decoding other images at its limit of {self.settings.max_decoding_pixels} "
                    "pixels in flight (MAX_DECODING_PIXELS); retry shortly"
                ) from None
            if waiting.fetching == 0:  # no slow URL: the server's own decoding took the time
                raise Overloaded(
                    f"server is too busy to decode this request's images within {budget:g} s "
                    "(FETCH_TOTAL_TIMEOUT_S); retry shortly"
                ) from None
            raise BadRequest(f"input 'image': fetching and decoding took longer than {budget:g} s") from None
        except BaseExceptionGroup as failures:
            raise _first_failure(failures) from None
        results = [task.result() for task in tasks]
        decoded = [i for i, result in enumerate(results) if isinstance(result, _Decoded)]
        return PreparedImages(
            np.stack([results[i].pixels for i in decoded]) if decoded else None,
            decoded,
            {i: result for i, result in enumerate(results) if not isinstance(result, _Decoded)},
        )

    async def _prepare_one(
        self, index: int, element: str | bytes, preprocessor, waiting, consult: Consult | None
    ) -> Any:
        digest = consult is not None
        # Without a cache to consult between opening and decoding, a decoding thread that
        # finds room in the pixel budget decodes at once: one trip to a thread per image.
        decode_now = asyncio.get_running_loop() if consult is None else None
        try:
            source = classify(element)
            if source.kind is SourceKind.URL:
                waiting.fetching += 1
                try:
                    data = await self.fetcher.fetch(source.text)
                finally:
                    waiting.fetching -= 1
                opened = await self._in_thread(self._open, data, preprocessor, digest, decode_now)
            else:
                # base64 of a large photo takes milliseconds: in the thread too, off the event loop.
                opened = await self._in_thread(self._open_inline, source, preprocessor, digest, decode_now)
            if isinstance(opened, _Decoded):
                return opened
            image, sha256 = opened
            if consult is not None:
                answer = await consult(index, sha256)
                if answer is not None:
                    return answer
            try:
                pixels = await self.pixel_budget.acquire(image.width * image.height)
            except asyncio.CancelledError:
                waiting.stalled = True
                raise
            return _Decoded(await self._in_thread_releasing(pixels, self._finish, image, preprocessor))
        except ImageError as exc:
            raise InputError(IMAGE_INPUT, index, exc.message) from None

    async def _in_thread_releasing(self, pixels: int, function, *args):
        """Run in a decoding thread, giving `pixels` back to the budget when the thread is
        done with them: a cancelled request's decode may still be running, holding memory."""
        loop = asyncio.get_running_loop()
        try:
            job = self._threads.submit(function, *args)
        except RuntimeError:  # the pool is shut down
            self.pixel_budget.release(pixels)
            raise
        job.add_done_callback(lambda _: self._give_back_from_thread(loop, pixels))
        return await asyncio.wrap_future(job)

    def _give_back_from_thread(self, loop: asyncio.AbstractEventLoop, pixels: int) -> None:
        """Pixels a decoding thread is done with, back to the budget on `loop`, where its
        waiters are woken."""
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            loop.call_soon_threadsafe(self.pixel_budget.release, pixels)

    def _open_inline(
        self, source: ImageSource, preprocessor, digest: bool, decode_now: asyncio.AbstractEventLoop | None
    ) -> tuple[Image.Image, bytes | None] | _Decoded:
        limit = self.settings.max_image_bytes
        if source.kind is not SourceKind.FILE_BYTES and len(source.value) * 3 // 4 > limit * 1.1 + 1024:
            # Base64 far past the limit is refused before decoding it (which holds the GIL).
            raise ImageError(
                f"image is about {len(source.value) * 3 // 4} bytes, over the {limit}-byte limit"
            )
        if source.kind is SourceKind.DATA_URI:
            data = decode_data_uri(source.text)
        elif source.kind is SourceKind.BASE64:
            data = decode_base64(source.text)
        else:
            data = source.data
        check_image_size(len(data), self.settings.max_image_bytes)
        return self._open(data, preprocessor, digest, decode_now)

    def _open(
        self, data: bytes, preprocessor, digest: bool, decode_now: asyncio.AbstractEventLoop | None
    ) -> tuple[Image.Image, bytes | None] | _Decoded:
        """The image opened (header only) and the sha256 of its bytes when `digest`; or,
        given `decode_now` (the loop that owns the pixel budget) and room in the budget, its
        pixels, decoded here."""
        image = open_image(data, self.settings.max_image_pixels, preprocessor.draft_min_side)
        if decode_now:
            taken = self.pixel_budget.try_acquire(image.width * image.height)
            if taken is not None:
                try:
                    return _Decoded(self._finish(image, preprocessor))
                finally:
                    self._give_back_from_thread(decode_now, taken)
        return image, hashlib.sha256(data).digest() if digest else None

    def _finish(self, image: Image.Image, preprocessor) -> np.ndarray:
        return finish_preprocessing(image, preprocessor, self.settings.max_image_pixels)


def check_image_size(size: int, max_image_bytes: int) -> None:
    if size > max_image_bytes:
        raise ImageError(f"image is {size} bytes, over the {max_image_bytes}-byte limit")


def finish_preprocessing(image: Image.Image, preprocessor, max_pixels: int) -> np.ndarray:
    """An opened image (`open_image`) decoded and turned into the model's input."""
    rgb = finish_decoding(image, max_pixels)
    try:
        return preprocessor(rgb)
    except Exception as exc:  # noqa: BLE001 - an image the processor cannot take is its 400
        raise ImageError(f"cannot preprocess image: {type(exc).__name__}") from None


def image_pixels(data: bytes, preprocessor, max_image_bytes: int, max_pixels: int) -> np.ndarray:
    """The model's input for one encoded image, under the server's limits, in one call
    (python -m app.batch; the server splits it to reserve memory between the steps)."""
    check_image_size(len(data), max_image_bytes)
    image = open_image(data, max_pixels, preprocessor.draft_min_side)
    return finish_preprocessing(image, preprocessor, max_pixels)


@dataclass
class _Decoded:
    pixels: np.ndarray


class _BudgetWait:
    """Whether an element of one request was still waiting for the decoding budget when
    the request was cancelled (its deadline, or another element's failure), and how many
    of its URLs were still being fetched (a slow host is the request's; slow decoding with
    none, the server's)."""

    stalled = False
    fetching = 0


def _first_failure(group: BaseExceptionGroup) -> BaseException:
    leaves = list(_leaves(group))
    input_errors = [e for e in leaves if isinstance(e, InputError)]
    return min(input_errors, key=lambda e: e.index) if input_errors else leaves[0]


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
