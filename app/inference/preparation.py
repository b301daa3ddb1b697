"""Turn a request's `image` elements into one stacked input tensor: fetch URLs, decode
inline data, decode and preprocess in threads (overlapping other requests' forward passes)."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from app.errors import BadRequest, ImageError, InputError
from app.images.decode import decode_image
from app.images.fetch import ImageFetcher
from app.images.sources import ImageSource, SourceKind, classify, decode_base64, decode_data_uri
from app.inference.decode_threads import decode_executor
from app.inference.spec import IMAGE_INPUT
from app.settings import Settings


class ImagePreparer:
    def __init__(self, settings: Settings, fetcher: ImageFetcher):
        self.settings = settings
        self.fetcher = fetcher
        self._threads = decode_executor()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._threads, function, *args)

    async def prepare(self, elements: list[str | bytes], preprocessor) -> torch.Tensor:
        """All elements concurrently, within the request's fetch budget; the first failure
        (by element index) fails the request and cancels the rest."""
        budget = self.settings.fetch_total_timeout_s
        try:
            async with asyncio.timeout(budget), asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._prepare_one(i, e, preprocessor)) for i, e in enumerate(elements)
                ]
        except TimeoutError:
            raise BadRequest(f"input 'image': fetching and decoding took longer than {budget:g} s") from None
        except BaseExceptionGroup as failures:
            raise _first_failure(failures) from None
        # numpy, not torch.stack: no torch thread team on the event loop's thread.
        return torch.from_numpy(np.stack([task.result().numpy() for task in tasks]))

    async def _prepare_one(self, index: int, element: str | bytes, preprocessor) -> torch.Tensor:
        try:
            source = classify(element)
            if source.kind is SourceKind.URL:
                data = await self.fetcher.fetch(source.value)
                return await self._in_thread(self._decode_and_preprocess, data, preprocessor)
            # base64 of a large photo takes milliseconds: in the thread too, off the event loop.
            return await self._in_thread(self._inline_to_tensor, source, preprocessor)
        except ImageError as exc:
            raise InputError(IMAGE_INPUT, index, exc.message) from None

    def _inline_to_tensor(self, source: ImageSource, preprocessor) -> torch.Tensor:
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
        return self._decode_and_preprocess(data, preprocessor)

    def _decode_and_preprocess(self, data: bytes, preprocessor) -> torch.Tensor:
        image = decode_image(data, self.settings.max_image_pixels, preprocessor.draft_min_side)
        return preprocessor(image)


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
