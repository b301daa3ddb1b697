"""Hostile input through the real server: every case is a clear 4xx naming the problem (or
a 200 for odd but valid images), and the server answers a good request right after.
Every connection attempt is watched by the tripwire: nothing leaves 127.0.0.1."""

from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import json
import struct

import httpx
import numpy as np
import pytest
from PIL import Image

from app.images.fetch import system_resolver
from tests.hostile_server import hostile_server
from tests.support import data_uri, embeddings_of, encode, image_request, photo, run_server, server_settings

GOOD = encode(photo("astronaut").resize((64, 64)))
CAT = encode(photo("chelsea"))


def _json(payload) -> bytes:
    return json.dumps(payload).encode()


def _image(element, **flags) -> bytes:
    return _json(image_request([element], **flags))


def _png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def _bomb() -> bytes:
    """A PNG of 8000 x 8000 = 64 megapixels that compresses to a few tens of KB."""
    return _png(Image.new("1", (8000, 8000)))


def _binary(header: dict, binary: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return text + binary, {"Inference-Header-Content-Length": str(length)}


def _binary_image(
    elements: list[bytes], declared: int | None = None, extra: bytes = b""
) -> tuple[bytes, dict]:
    chunk = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    size = len(chunk) if declared is None else declared
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(elements)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    return _binary(header, chunk + extra)


def cases(host: str, port: int):
    """(id, body, headers, status, words in the error message; None for a 200)."""
    plain = {}
    return [
        # -- the request itself --
        ("malformed json", b'{"inputs": [', plain, 400, ["not valid JSON"]),
        ("json array", b"[1, 2]", plain, 400, ["JSON object"]),
        ("empty body", b"", plain, 400, ["not valid JSON"]),
        ("no inputs", _json({"inputs": []}), plain, 400, ["inputs"]),
        (
            "input without shape",
            _json({"inputs": [{"name": "image", "datatype": "BYTES", "data": ["x"]}]}),
            plain,
            400,
            ["shape"],
        ),
        (
            "missing image",
            _json({"inputs": [{"name": "normalize", "shape": [1], "datatype": "BYTES", "data": ["true"]}]}),
            plain,
            400,
            ["missing input 'image'"],
        ),
        (
            "image as FP32",
            _json({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
            plain,
            400,
            ["BYTES"],
        ),
        (
            "unknown datatype",
            _json({"inputs": [{"name": "image", "shape": [1], "datatype": "STRING", "data": ["x"]}]}),
            plain,
            400,
            ["unknown datatype"],
        ),
        (
            "shape mismatch",
            _json(
                {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [data_uri(GOOD)]}]}
            ),
            plain,
            400,
            ["shape [2] needs 2 elements, got 1"],
        ),
        (
            "negative shape",
            _json(
                {"inputs": [{"name": "image", "shape": [-1], "datatype": "BYTES", "data": [data_uri(GOOD)]}]}
            ),
            plain,
            400,
            ["negative"],
        ),
        (
            "number in BYTES data",
            _json({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [7]}]}),
            plain,
            400,
            ["element 0", "strings"],
        ),
        (
            "duplicate input",
            _json({"inputs": [image_request([data_uri(GOOD)])["inputs"][0]] * 2}),
            plain,
            400,
            ["more than once"],
        ),
        (
            "unknown input",
            _json(image_request([data_uri(GOOD)], colour="red")),
            plain,
            400,
            ["unknown input 'colour'"],
        ),
        (
            "unknown output",
            _json(image_request([data_uri(GOOD)]) | {"outputs": [{"name": "logits"}]}),
            plain,
            400,
            ["unknown output 'logits'"],
        ),
        (
            "too many images",
            _json(image_request([data_uri(GOOD)] * 9)),
            plain,
            413,
            ["9 images", "limit of 8"],
        ),
        ("body over the limit", b"{" + b" " * (5 * 1024 * 1024), plain, 413, ["body", "limit"]),
        ("bad flag", _image(data_uri(GOOD), normalize="maybe"), plain, 400, ["normalize", "maybe"]),
        (
            "unknown pooling",
            _image(data_uri(GOOD), pooling_strategy="median"),
            plain,
            400,
            ["pooling", "median"],
        ),
        (
            "bad timeout",
            _json(image_request([data_uri(GOOD)]) | {"parameters": {"timeout": "soon"}}),
            plain,
            400,
            ["timeout"],
        ),
        ("unknown encoding", _image(data_uri(GOOD)), {"Content-Encoding": "br"}, 400, ["Content-Encoding"]),
        ("corrupt gzip", b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, ["gzip"]),
        (
            "gzip bomb",
            gzip.compress(b" " * (6 * 1024 * 1024)),
            {"Content-Encoding": "gzip"},
            413,
            ["decompressed", "limit"],
        ),
        # -- the image bytes --
        ("broken base64", _image("@@@not-base64@@@"), plain, 400, ["element 0", "base64"]),
        (
            "non-image bytes",
            _image(base64.b64encode(b"hello, world").decode()),
            plain,
            400,
            ["element 0", "not a recognised image"],
        ),
        (
            "data uri of text",
            _image("data:text/plain;base64,aGVsbG8="),
            plain,
            400,
            ["element 0", "text/plain"],
        ),
        ("empty data uri", _image("data:image/png;base64,"), plain, 400, ["element 0", "empty"]),
        ("truncated jpeg", _image(data_uri(CAT[:2000])), plain, 400, ["element 0", "truncated"]),
        (
            "truncated png",
            _image(data_uri(_png(photo("coffee"))[:5000], "image/png")),
            plain,
            400,
            ["element 0", "truncated"],
        ),
        (
            "decompression bomb",
            _image(data_uri(_bomb(), "image/png")),
            plain,
            400,
            ["64000000 pixels", "pixel limit"],
        ),
        (
            "1x1 image",
            _image(data_uri(_png(Image.new("RGB", (1, 1))), "image/png")),
            plain,
            400,
            ["1x1", "smaller than"],
        ),
        (
            "100000x1 image",
            _image(data_uri(_png(Image.new("L", (100000, 1))), "image/png")),
            plain,
            400,
            ["100000x1"],
        ),
        (
            "100000x2 image",
            _image(data_uri(_png(Image.new("L", (100000, 2))), "image/png")),
            plain,
            400,
            ["100000x2", "aspect ratio"],
        ),
        (
            "second element bad",
            _json(image_request([data_uri(GOOD), "data:image/png;base64,AAAA"])),
            plain,
            400,
            ["element 1"],
        ),
        ("animated gif", _image(data_uri(_animated_gif(), "image/gif")), plain, 200, None),
        (
            "cmyk jpeg",
            _image(data_uri(encode(Image.new("CMYK", (48, 48), (0, 255, 255, 0))))),
            plain,
            200,
            None,
        ),
        (
            "16-bit png",
            _image(data_uri(_png(Image.fromarray(np.full((40, 40), 40000, np.uint16))), "image/png")),
            plain,
            200,
            None,
        ),
        # -- URLs --
        ("ftp url", _image("ftp://127.0.0.1/a.jpg"), plain, 400, ["scheme", "ftp"]),
        ("file url", _image("file:///etc/passwd"), plain, 400, ["scheme", "file"]),
        ("private literal", _image("http://10.0.0.1/a.jpg"), plain, 400, ["element 0", "refused by policy"]),
        (
            "metadata literal",
            _image("http://169.254.169.254/latest/meta-data/"),
            plain,
            400,
            ["refused by policy"],
        ),
        (
            "mapped ipv6 literal",
            _image("http://[::ffff:192.168.0.1]/a.jpg"),
            plain,
            400,
            ["refused by policy"],
        ),
        ("ula literal", _image("http://[fd00::1]/a.jpg"), plain, 400, ["refused by policy"]),
        (
            "hostname to metadata",
            _image("http://metadata.test/latest/meta-data/"),
            plain,
            400,
            ["refused by policy"],
        ),
        ("hostname to cgnat", _image("http://cgnat.test/a.jpg"), plain, 400, ["refused by policy"]),
        ("loopback by name", _image(f"http://localhost:{port}/image.jpg"), plain, 400, ["refused by policy"]),
        (
            "loopback as integer",
            _image(f"http://2130706433:{port}/image.jpg"),
            plain,
            400,
            ["refused by policy"],
        ),
        (
            "redirect to loopback name",
            _image(f"{host}/redirect?to=http://localhost:{port}/image.jpg"),
            plain,
            400,
            ["refused by policy"],
        ),
        (
            "redirect to metadata",
            _image(f"{host}/redirect?to=http://169.254.169.254/latest/meta-data/"),
            plain,
            400,
            ["refused by policy"],
        ),
        (
            "redirect to private name",
            _image(f"{host}/redirect?to=http://metadata.test/"),
            plain,
            400,
            ["refused by policy"],
        ),
        ("redirect loop", _image(f"{host}/loop"), plain, 400, ["redirects"]),
        ("never answers", _image(f"{host}/silent"), plain, 400, ["timed out"]),
        ("streams forever", _image(f"{host}/forever"), plain, 400, ["image limit"]),
        ("content-length lies", _image(f"{host}/long-length"), plain, 400, ["element 0", "failed"]),
        (
            "declared too large",
            _image(f"{host}/huge-length"),
            plain,
            400,
            ["over the 1048576-byte image limit"],
        ),
        ("url 404", _image(f"{host}/missing.jpg"), plain, 400, ["HTTP 404"]),
        ("non-image content type", _image(f"{host}/page.html"), plain, 400, ["text/html"]),
        # -- binary tensor data --
        (
            "header length past body",
            *(_binary({"inputs": []}, b"")[0], {"Inference-Header-Content-Length": "99999"}),
            400,
            ["Inference-Header-Content-Length"],
        ),
        (
            "header length not a number",
            _image(data_uri(GOOD)),
            {"Inference-Header-Content-Length": "ten"},
            400,
            ["not an integer"],
        ),
        (
            "binary size past body",
            *_binary_image([GOOD], declared=len(GOOD) + 100),
            400,
            ["binary_data_size", "runs past"],
        ),
        (
            "binary bytes left over",
            *_binary_image([GOOD], extra=b"junk"),
            400,
            ["beyond those the inputs declare"],
        ),
        (
            "element length past chunk",
            *_binary_image([struct.pack("<I", 10**6) + b"abc"], declared=None),
            400,
            ["element 0"],
        ),
        ("truncated element length", *_binary_image([], declared=None, extra=b""), 400, ["no elements"]),
        ("raw body empty", b"", {"Inference-Header-Content-Length": "0"}, 400, ["empty body"]),
    ]


@pytest.fixture(scope="module")
def hostile():
    with hostile_server(CAT) as server:
        yield server


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory, hostile):
    async def resolver(host, port):
        """The test's own DNS for *.test names; loopback names and numbers resolve locally."""
        table = {"metadata.test": "169.254.169.254", "cgnat.test": "100.64.0.7"}
        if host in table:
            return [ipaddress.ip_address(table[host])]
        if host.endswith(".test"):
            raise OSError(f"unknown host {host}")
        return await system_resolver(host, port)

    settings = server_settings(
        tiny_models["dinov2"],
        tmp_path_factory.mktemp("srv"),
        allow_private_urls=False,
        url_allowlist="127.0.0.1",
        fetch_timeout_s=1.0,
        max_image_bytes=1024 * 1024,
        max_request_bytes=4 * 1024 * 1024,
        max_images_per_request=8,
    )
    with run_server(settings, resolver=resolver) as running:
        yield running


CASE_IDS = [c[0] for c in cases("http://127.0.0.1:1", 1)]


def test_there_are_at_least_forty_cases():
    assert len(CASE_IDS) >= 40 and len(set(CASE_IDS)) == len(CASE_IDS)


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_input(case, server, hostile, tripwire):
    _, body, headers, status, words = next(c for c in cases(hostile.base_url, hostile.port) if c[0] == case)
    response = httpx.post(server.infer_url(), content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    if words is None:
        assert embeddings_of(response).shape == (1, 32)
    else:
        message = response.json()["error"]
        for word in words:
            assert word in message, message
    good = httpx.post(server.infer_url(), json=image_request([data_uri(GOOD)]), timeout=30)
    assert good.status_code == 200 and embeddings_of(good).shape == (1, 32)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_the_allowed_host_is_still_fetched(server, hostile, tripwire):
    response = httpx.post(
        server.infer_url(), json=image_request([f"{hostile.base_url}/image.jpg"]), timeout=30
    )
    assert response.status_code == 200, response.text
    assert set(tripwire.attempts) <= {"127.0.0.1"}
