"""Inline image data: the base64 forms clients send, all decoded to the same bytes."""

from __future__ import annotations

import base64

import pytest

from app.errors import ImageError
from app.images.sources import decode_base64, decode_data_uri

# Bytes whose base64 holds '+' and '/' (so the URL-safe form differs) and needs padding.
DATA = bytes(range(256)) * 3 + b"\xfb\xff"
STANDARD = base64.b64encode(DATA).decode()


@pytest.mark.parametrize(
    "text",
    [
        STANDARD,
        "\n".join(STANDARD[i : i + 76] for i in range(0, len(STANDARD), 76)),  # MIME line wrapping
        f"  {STANDARD}\r\n",
        base64.urlsafe_b64encode(DATA).decode(),
        STANDARD.rstrip("="),
    ],
    ids=["standard", "wrapped", "surrounding-whitespace", "url-safe", "unpadded"],
)
def test_every_base64_form_decodes_to_the_same_bytes(text):
    assert STANDARD.endswith("=") and "+" in STANDARD and "/" in STANDARD
    assert decode_base64(text) == DATA
    assert decode_data_uri("data:image/png;base64," + text) == DATA


@pytest.mark.parametrize("text", ["", "   ", "====", "not*base64!", "é" * 8])
def test_empty_or_invalid_base64_is_an_image_error(text):
    with pytest.raises(ImageError):
        decode_base64(text)
