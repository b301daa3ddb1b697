"""Classify an `image` element and turn the inline kinds into bytes.

An element is an http(s) URL, a `data:` URI, bare base64 of the file, or (binary tensor
data) the encoded file itself.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from app.errors import ImageError


class SourceKind(enum.Enum):
    URL = "url"
    DATA_URI = "data_uri"
    BASE64 = "base64"
    FILE_BYTES = "file_bytes"


@dataclass(frozen=True)
class ImageSource:
    kind: SourceKind
    value: str | bytes  # bytes for FILE_BYTES only

    @property
    def text(self) -> str:
        """The value of a URL, data URI or base64 source."""
        if isinstance(self.value, bytes):
            raise TypeError("a FILE_BYTES source has no text")
        return self.value

    @property
    def data(self) -> bytes:
        """The value of a FILE_BYTES source."""
        if isinstance(self.value, str):
            raise TypeError(f"a {self.kind.value} source is text")
        return self.value


# Leading bytes of the formats clients send as files (JPEG, PNG, GIF, WebP, BMP, TIFF).
_FILE_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?),", re.I)
_WHITESPACE = re.compile(rb"\s+")


def classify(element: str | bytes) -> ImageSource:
    if isinstance(element, bytes):
        if _looks_like_file(element):
            return ImageSource(SourceKind.FILE_BYTES, element)
        try:
            element = element.decode("utf-8")
        except UnicodeDecodeError:
            # Not text, not a known signature: let the decoder say what it is.
            return ImageSource(SourceKind.FILE_BYTES, element)
    text = element.strip()
    lowered = text[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return ImageSource(SourceKind.URL, text)
    if lowered.startswith("data:"):
        return ImageSource(SourceKind.DATA_URI, text)
    if "://" in text[:16]:
        scheme = text.split("://", 1)[0]
        raise ImageError(f"URL scheme {scheme!r} is not supported; use http or https")
    return ImageSource(SourceKind.BASE64, text)


def is_image_source(element: str) -> bool:
    """Whether a string reads as an image: a URL, a data URI, or base64 whose first bytes
    are an image file's signature (a word such as 'dogs' is valid base64 too)."""
    try:
        source = classify(element)
    except ImageError:
        return False
    if source.kind is not SourceKind.BASE64:
        return True
    head = source.text[:32]
    try:
        return _looks_like_file(decode_base64(head[: len(head) // 4 * 4]))
    except ImageError:
        return False


def _looks_like_file(data: bytes) -> bool:
    if data.startswith(_FILE_SIGNATURES):
        return True
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def decode_data_uri(uri: str) -> bytes:
    match = _DATA_URI.match(uri)
    if not match:
        raise ImageError("malformed data URI: expected data:[<type>][;base64],<data>")
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith("image/") and mime != "application/octet-stream":
        raise ImageError(f"data URI has type {mime!r}, not an image type")
    payload = uri[match.end() :]
    if ";base64" in match.group("params").lower():
        return decode_base64(payload)
    return unquote_to_bytes(payload)


def decode_base64(text: str) -> bytes:
    try:  # the common case, padded standard base64 with nothing else, in one C call
        decoded = binascii.a2b_base64(text, strict_mode=True)
        if decoded:
            return decoded
    except (binascii.Error, ValueError):
        pass  # whitespace, the URL-safe alphabet, missing padding or not base64: the long way
    data = _WHITESPACE.sub(b"", text.encode("ascii", "replace"))
    if not data:
        raise ImageError("empty image data")
    if b"-" in data or b"_" in data:
        data = data.replace(b"-", b"+").replace(b"_", b"/")  # URL-safe alphabet
    data += b"=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not a URL, data URI or valid base64 of an image file") from None
