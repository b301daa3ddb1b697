"""The decoding stage: a block of (id, source) rows turned into the model's inputs (in Ray
tasks of their own, or row by row in an actor's threads: embed.py), with the server's
limits (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, the supported formats) and, for URLs, its
fetcher and URL policy (ALLOW_URLS, ALLOW_PRIVATE_URLS, URL_ALLOWLIST, FETCH_TIMEOUT_S).
A row that cannot be embedded keeps its place with its error (and zero pixels): it is
listed, never dropped silently, and never stops the block."""

from __future__ import annotations

import asyncio
import os

import numpy as np

from app.client import is_url
from app.errors import ImageError
from app.images.decode import set_pillow_pixel_limit
from app.images.fetch import ImageFetcher, redact_url
from app.images.url_policy import UrlPolicy
from app.inference.preparation import check_image_size, image_pixels
from app.settings.server import ServerSettings

OK = ""  # the error column of a row that decoded


def decode_block(
    batch: dict[str, np.ndarray], *, server: ServerSettings, preprocessor, input_shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """{id, source} -> {id, source, pixels [n, *input_shape] float32, error ("" if decoded)}."""
    set_pillow_pixel_limit(server.max_image_pixels)
    sources = [str(s) for s in batch["source"]]
    fetched = fetch_urls(sources, server)
    pixels = np.zeros((len(sources), *input_shape), dtype=np.float32)
    errors = []
    for row, source in enumerate(sources):
        decoded = decode_source(source, fetched, preprocessor, server)
        if isinstance(decoded, str):
            errors.append(decoded)
        else:
            pixels[row] = decoded
            errors.append(OK)
    return {
        "id": batch["id"],
        "source": batch["source"],
        "pixels": pixels,
        "error": np.array(errors, dtype=object),
    }


def decode_source(
    source: str, fetched: dict[str, bytes | str], preprocessor, server: ServerSettings
) -> np.ndarray | str:
    """One source's model input, or why there is none: a URL's bytes come from `fetched`
    (fetch_urls), a file is read here, one at a time (a block's files are never all in
    memory at once). Safe in several threads at once: Pillow and numpy release the GIL."""
    try:
        data = fetched[source] if is_url(source) else _read_file(source, server.max_image_bytes)
        if isinstance(data, str):
            raise ImageError(data)
        return image_pixels(data, preprocessor, server.max_image_bytes, server.max_image_pixels)
    except ImageError as exc:
        return exc.message


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        check_image_size(os.stat(path).st_size, max_bytes)  # refused before it is read into memory
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read the file: {exc.strerror or exc}") from None


def fetch_urls(sources: list[str], server: ServerSettings) -> dict[str, bytes | str]:
    """Each URL among `sources` fetched (concurrently): its bytes, or why it was not fetched
    (refused by the policy, HTTP error, limit)."""
    urls = [s for s in sources if is_url(s)]
    if not urls:
        return {}

    async def fetch_all() -> dict[str, bytes | str]:
        fetcher = ImageFetcher(
            server.fetch_timeout_s,
            server.max_image_bytes,
            UrlPolicy.from_settings(server),
            max_concurrent=server.max_concurrent_fetches,
        )
        try:
            results = await asyncio.gather(*(fetcher.fetch(u) for u in urls), return_exceptions=True)
        finally:
            await fetcher.aclose()
        outcome: dict[str, bytes | str] = {}
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, ImageError):  # PolicyRefusal included
                outcome[url] = result.message
            elif isinstance(result, Exception):  # listed like any failure: the job goes on
                outcome[url] = f"fetching {redact_url(url)} failed: {type(result).__name__}"
            elif isinstance(result, BaseException):
                raise result
            else:
                outcome[url] = result
        return outcome

    return asyncio.run(fetch_all())
