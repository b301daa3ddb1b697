"""Fetch image URLs through one shared httpx.AsyncClient: every host resolved and checked
by the URL policy, the connection pinned to the checked address (no second lookup to
rebind), every redirect checked again, a timeout and a streamed byte cap."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from app.errors import ImageError
from app.images.url_policy import IPAddress, UrlPolicy

# Content types that are certainly not an image file (an error page, an API answer).
_NON_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def redact_url(url: str) -> str:
    """A URL without its query string and credentials, safe for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class ImageFetcher:
    def __init__(
        self,
        timeout_s: float,
        max_bytes: int,
        policy: UrlPolicy | None = None,
        resolver: Resolver = system_resolver,
        max_concurrent: int = 64,
    ):
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.policy = policy or UrlPolicy()
        self.resolver = resolver
        self._slots = asyncio.Semaphore(max_concurrent)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # each redirect is checked by the policy first
            # identity: the byte cap counts what arrives, and no gzip bomb inflates past it.
            headers={"User-Agent": "image-embed-server", "Accept": "image/*", "Accept-Encoding": "identity"},
            trust_env=False,  # never route image fetches through an ambient proxy
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        shown = redact_url(url)
        try:
            async with self._slots:
                # wait_for bounds the whole download: a server that trickles bytes forever
                # would otherwise reset httpx's per-read timeout on every chunk.
                return await asyncio.wait_for(self._follow(url), self.timeout_s)
        except (TimeoutError, httpx.TimeoutException):
            raise ImageError(f"fetching {shown} timed out after {self.timeout_s:g} s") from None
        except httpx.InvalidURL as exc:
            raise ImageError(f"invalid URL {shown}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ImageError(f"fetching {shown} failed: {type(exc).__name__}") from None

    async def _follow(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            location = await self._get(url)
            if isinstance(location, bytes):
                return location
            url = urljoin(url, location)
        raise ImageError(f"fetching {redact_url(url)}: more than {MAX_REDIRECTS} redirects")

    async def _pinned_request(self, url: str) -> httpx.Request:
        """A request to the address the policy checked, with the original Host and TLS name."""
        scheme, host, port = self.policy.check_url(url)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except OSError:
                raise ImageError(f"cannot resolve host {host!r}") from None
        if not addresses:
            raise ImageError(f"cannot resolve host {host!r}")
        for address in addresses:  # every address, or a round-robin answer could slip through
            self.policy.check_address(host, address)
        target = httpx.URL(url).copy_with(host=str(addresses[0]))
        default_port = 443 if scheme == "https" else 80
        host_header = host if ":" not in host else f"[{host}]"
        if port != default_port:
            host_header += f":{port}"
        return self._client.build_request(
            "GET", target, headers={"Host": host_header}, extensions={"sni_hostname": host}
        )

    async def _get(self, url: str) -> bytes | str:
        """The body, or the Location of a redirect to follow."""
        shown = redact_url(url)
        request = await self._pinned_request(url)
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code in _REDIRECTS and response.headers.get("location"):
                return response.headers["location"]
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
            chunks, received = [], 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > self.max_bytes:
                    raise ImageError(f"{shown} is larger than the {self.max_bytes}-byte image limit")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()
