"""Fetch image URLs through one shared httpx.AsyncClient, with a timeout and a byte cap."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from app.errors import ImageError

# Content types that are certainly not an image file (an error page, an API answer).
_NON_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")
MAX_REDIRECTS = 5


def redact_url(url: str) -> str:
    """A URL without its query string and credentials, safe for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class ImageFetcher:
    def __init__(self, timeout_s: float, max_bytes: int, client: httpx.AsyncClient | None = None):
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": "image-embed-server", "Accept": "image/*"},
            trust_env=False,  # never route image fetches through an ambient proxy
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        shown = redact_url(url)
        try:
            # wait_for bounds the whole download: a server that trickles bytes forever
            # would otherwise reset httpx's per-read timeout on every chunk.
            return await asyncio.wait_for(self._download(url, shown), self.timeout_s)
        except TimeoutError:
            raise ImageError(f"fetching {shown} timed out after {self.timeout_s:g} s") from None
        except httpx.TooManyRedirects:
            raise ImageError(f"fetching {shown}: more than {MAX_REDIRECTS} redirects") from None
        except httpx.TimeoutException:
            raise ImageError(f"fetching {shown} timed out after {self.timeout_s:g} s") from None
        except httpx.InvalidURL as exc:
            raise ImageError(f"invalid URL {shown}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ImageError(f"fetching {shown} failed: {type(exc).__name__}") from None

    async def _download(self, url: str, shown: str) -> bytes:
        async with self._client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ImageError(f"fetching {shown} returned HTTP {response.status_code}")
            content_type = response.headers.get("content-type", "").lower()
            if content_type.startswith(_NON_IMAGE_TYPES):
                raise ImageError(f"{shown} has Content-Type {content_type.split(';')[0]!r}, not an image")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise ImageError(
                    f"{shown} is {int(declared)} bytes, over the {self.max_bytes}-byte image limit"
                )
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > self.max_bytes:
                    raise ImageError(f"{shown} is larger than the {self.max_bytes}-byte image limit")
                chunks.append(chunk)
            return b"".join(chunks)
