"""Fetch image URLs through one shared httpx.AsyncClient: every host resolved and checked
by the URL policy, the connection pinned to the checked address (no second lookup to
rebind), every redirect checked again, a timeout and a streamed byte cap.

The request keeps the URL's host name: the connection pool is keyed by it and TLS checks
the certificate against it, so a connection verified for one name is never reused for
another that happens to share its address. Only the TCP connect is pinned, by a network
backend that connects to the address the policy checked for this request (and refuses
any host nobody checked)."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from app.errors import ImageError
from app.images.url_policy import IPAddress, PolicyRefusal, UrlPolicy

# Content types that are certainly not an image file (an error page, an API answer).
_NON_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


# (host as httpcore sees it, port) -> the checked address, set by the task that sends.
# httpcore opens connections in the calling task, so the backend sees this task's value.
_PINNED: contextvars.ContextVar[dict[tuple[str, int], str]] = contextvars.ContextVar("pinned_addresses")


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses the URL policy checked for the request being sent."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None):
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout=None, local_address=None, socket_options=None):
        address = _PINNED.get({}).get((host.lower(), port))
        if address is None:
            raise httpcore.ConnectError(f"refusing to connect to {host}:{port}: no checked address")
        return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("image fetches never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def pinned_transport(verify: ssl.SSLContext | bool = True) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
    pool = transport._pool  # httpx 0.28 takes no network backend: swap the pool (pinned version)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=pool._ssl_context,
        max_connections=pool._max_connections,
        max_keepalive_connections=pool._max_keepalive_connections,
        keepalive_expiry=pool._keepalive_expiry,
        network_backend=PinnedBackend(),
    )
    return transport


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
        verify: ssl.SSLContext | bool = True,  # certificate checks; tests pass their own CA
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
            transport=pinned_transport(verify),
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
        """A request for `url`, its connection pinned to an address the policy checked."""
        scheme, host, port = self.policy.check_url(url)
        try:
            target = httpx.URL(url)
            # The name as it goes to DNS and to httpcore (IDNA, lower case, no brackets).
            wire_host = target.raw_host.decode("ascii").lower()
        except Exception:  # noqa: BLE001 - httpx and idna raise several types on bad hosts
            raise PolicyRefusal(f"URL host {host!r} is not a valid host name (refused by policy)") from None
        self.policy.check_host(host)
        literal = True
        try:
            addresses = [ipaddress.ip_address(wire_host)]
        except ValueError:
            literal = False
            try:
                addresses = await self.resolver(wire_host, port)
            except Exception:  # noqa: BLE001 - any resolver failure (IDNA, OS, timeout) is a refusal
                raise self.policy.refusal(host) from None
        if not addresses:
            raise self.policy.refusal(host)
        for address in addresses:  # every address, or a round-robin answer could slip through
            self.policy.check_address(host, address, literal)
        _PINNED.set({(wire_host, port): str(addresses[0])})
        return self._client.build_request("GET", target)

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
