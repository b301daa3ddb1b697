"""Decoding: EXIF orientation, RGB with alpha on white, 16-bit greys, limits, corrupt data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageError
from app.images.decode import decode_image
from tests.support import encode

LIMIT = 10_000_000


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(wide, "JPEG", exif=exif.tobytes(), quality=95), LIMIT)
    assert decoded.size == (20, 40)
    top = np.asarray(decoded)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_alpha_is_flattened_onto_white():
    transparent = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    decoded = decode_image(encode(transparent, "PNG"), LIMIT)
    assert decoded.mode == "RGB" and decoded.getpixel((3, 3)) == (255, 255, 255)
    half = Image.new("LA", (16, 16), (0, 128))
    assert decode_image(encode(half, "PNG"), LIMIT).getpixel((0, 0)) == (127, 127, 127)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    decoded = decode_image(encode(grey, "PNG"), LIMIT)
    assert decoded.getpixel((1, 1)) == (127, 127, 127)


def test_cmyk_and_palette_become_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    assert decode_image(encode(cmyk, "JPEG"), LIMIT).mode == "RGB"
    palette = Image.new("RGB", (16, 16), (0, 200, 0)).convert("P")
    assert decode_image(encode(palette, "GIF"), LIMIT).getpixel((0, 0))[1] > 150


def test_pixel_limit_is_checked_from_the_header():
    big = encode(Image.new("L", (4000, 3000)), "PNG")  # compresses to a few KB
    with pytest.raises(ImageError, match="4000x3000, over the 1000000-pixel limit"):
        decode_image(big, 1_000_000)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"GIF89a but not really", "not a recognised image"),
        (b"plain text, no image", "not a recognised image"),
        (encode(Image.new("RGB", (300, 300), (9, 9, 9)), "PNG")[:300], "truncated"),
        (encode(Image.new("RGB", (1, 1)), "PNG"), "smaller than"),
        (encode(Image.new("RGB", (2000, 10)), "PNG"), "aspect ratio"),
    ],
)
def test_bad_images_are_refused(data, words):
    with pytest.raises(ImageError, match=words):
        decode_image(data, LIMIT)
