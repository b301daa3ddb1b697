"""The fetcher under hostile URLs: a resolver the test controls, a tripwire on every
connection attempt, and a misbehaving server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import ssl
import time
from contextlib import contextmanager

import pytest
import trustme

from app.errors import ImageError
from app.images.fetch import ImageFetcher
from app.images.url_policy import PolicyRefusal, UrlPolicy
from tests.hostile_server import hostile_server
from tests.support import LOOPBACK, encode, photo, serve_in_thread

IMAGE = encode(photo("chelsea"))
# Refused classes, reached through a hostname the test's resolver maps there.
INTERNAL = {
    "metadata.test": "169.254.169.254",
    "db.test": "10.0.0.5",
    "cache.test": "172.16.3.4",
    "router.test": "192.168.1.1",
    "cgnat.test": "100.64.1.1",
    "ula.test": "fd00::5",
    "linklocal6.test": "fe80::1",
    "mcast.test": "239.1.1.1",
    "mapped.test": "::ffff:10.0.0.5",
    "reserved.test": "240.0.0.9",
    "zero.test": "0.0.0.0",
}


def resolver_for(table: dict[str, list[str]]):
    async def resolve(host, port):
        if host not in table:
            raise OSError(f"unknown host {host}")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


def fetch(url, policy=UrlPolicy(), resolver=None, timeout_s=5.0, max_bytes=10**6):
    async def go():
        kwargs = {"resolver": resolver} if resolver else {}
        fetcher = ImageFetcher(timeout_s, max_bytes, policy, **kwargs)
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("host", sorted(INTERNAL))
def test_hostnames_resolving_to_internal_addresses_are_refused(host, tripwire):
    resolver = resolver_for({h: [a] for h, a in INTERNAL.items()})
    with pytest.raises(PolicyRefusal, match="refused by policy"):
        fetch(f"http://{host}/latest/meta-data", resolver=resolver)
    assert tripwire.attempts == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.jpg",
        "http://172.16.0.1/a.jpg",
        "http://192.168.0.1/a.jpg",
        "http://100.64.0.1/a.jpg",
        "http://[fd00::1]/a.jpg",
        "http://[fe80::1]/a.jpg",
        "http://224.0.0.1/a.jpg",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "https://10.1.2.3:8443/a.jpg",
    ],
)
def test_literal_internal_addresses_are_refused(url, tripwire):
    with pytest.raises(PolicyRefusal, match="refused by policy") as refusal:
        fetch(url, resolver=resolver_for({}))
    assert tripwire.attempts == []
    # The client's own literal: the message says what kind of address it is, and what allows it.
    assert " is a " in str(refusal.value) and "URL_ALLOWLIST" in str(refusal.value)


LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
    "localhost",
    "localhost.",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_spellings_are_refused_by_default(host, tripwire):
    with hostile_server(IMAGE) as server:
        with pytest.raises(PolicyRefusal, match="refused by policy"):
            fetch(f"http://{host}:{server.port}/image.jpg")
    assert tripwire.attempts == []


def test_allowed_host_is_fetched_and_redirects_elsewhere_are_checked_again(tripwire):
    policy = UrlPolicy(allowed_hosts=frozenset({"127.0.0.1"}))
    with hostile_server(IMAGE) as server:
        assert fetch(f"{server.base_url}/image.jpg", policy) == IMAGE
        # A redirect to the same allowed host is followed ...
        assert fetch(f"{server.base_url}/redirect?to=/image.jpg", policy) == IMAGE
        # ... one to another spelling of loopback, or to the metadata address, is not.
        for target in (
            f"http://localhost:{server.port}/image.jpg",
            f"http://127.1:{server.port}/image.jpg",
            "http://169.254.169.254/latest/meta-data/",
            f"http://[::1]:{server.port}/image.jpg",
        ):
            with pytest.raises(PolicyRefusal, match="refused by policy"):
                fetch(f"{server.base_url}/redirect?to={target}", policy)
    assert set(tripwire.attempts) == {"127.0.0.1"}


def test_redirects_are_capped(tripwire):
    with hostile_server(IMAGE) as server:
        with pytest.raises(ImageError, match="more than 5 redirects"):
            fetch(f"{server.base_url}/loop", UrlPolicy(allow_private=True))


def test_connection_goes_to_the_checked_address(tripwire):
    """One lookup per hop, and the socket connects to the address that lookup gave: a
    resolver that would answer differently the second time (DNS rebinding) is never asked."""
    answers = iter([["127.0.0.1"], ["10.0.0.5"]])

    async def rebinding(host, port):
        return [ipaddress.ip_address(a) for a in next(answers)]

    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    with hostile_server(IMAGE) as server:
        assert fetch(f"http://images.test:{server.port}/image.jpg", policy, rebinding) == IMAGE
        assert server.seen_hosts[-1] == f"images.test:{server.port}"  # Host header kept
    assert tripwire.attempts == ["127.0.0.1"]


def test_every_resolved_address_is_checked(tripwire):
    resolver = resolver_for({"mixed.test": ["127.0.0.1", "10.0.0.5"]})
    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    with pytest.raises(PolicyRefusal):
        fetch("http://mixed.test/image.jpg", policy, resolver)
    assert tripwire.attempts == []


@pytest.mark.parametrize(
    "path, words",
    [
        ("/silent", "timed out"),
        ("/forever", "larger than the 1000000-byte image limit"),
        ("/short-length", None),  # takes the declared 100 bytes: the decoder then refuses them
        ("/long-length", "failed"),
        ("/huge-length", "over the 1000000-byte image limit"),
        ("/missing.jpg", "HTTP 404"),
        ("/page.html", "text/html"),
    ],
)
def test_misbehaving_servers(path, words, tripwire):
    with hostile_server(IMAGE) as server:
        started = time.monotonic()
        if words is None:
            assert len(fetch(f"{server.base_url}{path}", UrlPolicy(allow_private=True), timeout_s=1.0)) == 100
            return
        with pytest.raises(ImageError, match=words):
            fetch(f"{server.base_url}{path}", UrlPolicy(allow_private=True), timeout_s=1.0)
        assert time.monotonic() - started < 5


def test_urls_switched_off(tripwire):
    with pytest.raises(PolicyRefusal, match="disabled"):
        fetch("http://127.0.0.1:9/image.jpg", UrlPolicy(allow_urls=False))
    assert tripwire.attempts == []


@contextmanager
def https_server(cert_for: str):
    """An HTTPS server on 127.0.0.1 with a certificate for `cert_for` from a test CA."""
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(cert_for).configure_cert(server_context)

    class KeepAlive(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # the client may pool the connection

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), KeepAlive)
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with serve_in_thread(httpd):
        yield httpd.server_address[1], client_context


def test_a_tls_connection_verified_for_one_name_is_never_reused_for_another(tripwire):
    """Both names resolve to the same address; the certificate is only for the first. A
    pool keyed by address would reuse the first name's verified connection for the second."""
    resolver = resolver_for({"images-a.test": ["127.0.0.1"], "images-b.test": ["127.0.0.1"]})
    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    with https_server("images-a.test") as (port, client_context):

        async def go():
            fetcher = ImageFetcher(5.0, 10**6, policy, resolver=resolver, verify=client_context)
            try:
                assert await fetcher.fetch(f"https://images-a.test:{port}/image.jpg") == IMAGE
                assert await fetcher.fetch(f"https://images-a.test:{port}/again.jpg") == IMAGE
                with pytest.raises(ImageError, match="failed: ConnectError"):
                    await fetcher.fetch(f"https://images-b.test:{port}/image.jpg")
            finally:
                await fetcher.aclose()

        asyncio.run(go())
    assert set(tripwire.attempts) == {"127.0.0.1"}


@pytest.mark.parametrize(
    "host", ["a" * 64 + ".invalid", "a..invalid", ".invalid", "xn--a.invalid", "bad\u0000name.invalid"]
)
def test_hosts_the_idna_codec_rejects_are_refused_without_a_lookup(host, tripwire):
    """The system resolver itself: these names fail IDNA encoding, so no DNS query leaves."""
    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    with pytest.raises(PolicyRefusal, match="refused by policy"):
        fetch(f"http://{host}/image.jpg", policy)
    assert tripwire.attempts == []


def test_a_resolver_error_of_any_type_is_a_refusal(tripwire):
    async def broken(host, port):
        raise RuntimeError("the resolver fell over")

    with pytest.raises(PolicyRefusal, match=r"does not resolve to a public address \(refused by policy\)"):
        fetch("http://images.test/image.jpg", resolver=broken)
    assert tripwire.attempts == []
