"""Decoding: EXIF orientation, RGB with alpha on white, 16-bit greys, limits, corrupt data."""

from __future__ import annotations

import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageError
from app.images.decode import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    decode_image,
    finish_decoding,
    open_image,
    set_pillow_pixel_limit,
)
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


DATA = Path(__file__).parent / "data"


def _ico_holding(png: bytes) -> bytes:
    """An ICO file whose one entry is a PNG (the header says 256x256, whatever it holds)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_only_the_supported_formats_are_opened():
    # ICO decodes its embedded PNG while opening: a 12000x12000 one is 550 MiB of pixels.
    huge_png = encode(Image.new("1", (12000, 12000)), "PNG")
    started = time.perf_counter()
    for data in (
        _ico_holding(huge_png),
        encode(Image.new("RGB", (64, 64)), "ICNS"),
        encode(Image.new("RGB", (64, 64)), "PCX"),
        encode(Image.new("RGB", (64, 64)), "TGA"),
    ):
        with pytest.raises(ImageError, match="not a recognised image format"):
            decode_image(data, LIMIT)
    assert time.perf_counter() - started < 2  # refused from the signature, nothing decoded


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_every_supported_format_decodes(fmt):
    image = Image.linear_gradient("L").resize((40, 30)).convert("RGB")
    assert decode_image(encode(image, fmt), LIMIT).size == (40, 30)


def test_pillows_own_bomb_guard_is_an_error_not_a_warning():
    set_pillow_pixel_limit(1_000_000)
    try:
        with warnings.catch_warnings():  # whatever the warning filters say
            warnings.simplefilter("ignore")
            with pytest.raises(ImageError, match="over the 10000000-pixel limit: Image size .1200000"):
                decode_image(encode(Image.new("L", (1200, 1000)), "PNG"), 10_000_000)
            assert decode_image(encode(Image.new("L", (1000, 1000)), "PNG"), 10_000_000).size == (1000, 1000)
    finally:
        set_pillow_pixel_limit(DEFAULT_MAX_PIXELS)


@pytest.mark.parametrize("name", ["typeerror.tif", "overflowerror.tif"])
def test_malformed_tiffs_found_by_fuzzing_are_image_errors(name):
    # Pillow raised TypeError and OverflowError from load() on these: a 500 before.
    with pytest.raises(ImageError, match="malformed"):
        decode_image((DATA / name).read_bytes(), LIMIT)


def test_size_is_checked_again_after_decoding():
    image = open_image(encode(Image.new("RGB", (8, 8)), "PNG"), LIMIT)
    decode = image.load

    def lying_load():  # a plugin whose header understated the size, as ICNS's can
        decode()
        image._size = (64, 64)

    image.load = lying_load
    with pytest.raises(ImageError, match="64x64, over the 100-pixel limit"):
        finish_decoding(image, 100)


def test_alpha_flattening_matches_compositing_onto_white():
    rng = np.random.default_rng(0)
    for mode, bands in (("RGBA", 4), ("LA", 2)):
        image = Image.fromarray(rng.integers(0, 256, (30, 40, bands), dtype=np.uint8), mode)
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        expected = Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
        assert np.array_equal(np.asarray(decode_image(encode(image, "PNG"), LIMIT)), np.asarray(expected))
