"""Mutation fuzzing of the decoder: valid files of every supported format, with bytes
flipped, inserted, deleted, truncated and header fields overwritten, go through the same
open / decode / preprocess steps as a request's image. The only exception allowed out is
ImageError (a 400 naming the element); anything else would be a 500."""

from __future__ import annotations

import io
import os
import random
import struct
import time
from contextlib import contextmanager

import pytest
from PIL import Image

from app.errors import ImageError
from app.images.decode import SUPPORTED_FORMATS, finish_decoding, open_image

# Pillow warns about the damaged metadata it skips: expected here by the thousand.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

CASES_PER_FORMAT = 2500
SECONDS_PER_FORMAT = 20.0  # a bound on the time, not a target: the cases usually run out first
MAX_PIXELS = 4_000_000


def _seeds(fmt: str) -> list[bytes]:
    """Small valid files of `fmt` in the modes and options clients send."""
    gradient = Image.linear_gradient("L").resize((48, 32))
    colour = Image.merge("RGB", (gradient, gradient.rotate(90).resize((48, 32)), gradient.transpose(0)))
    variants = [colour, gradient, colour.convert("P"), colour.convert("RGBA"), gradient.convert("1")]
    options = {
        "JPEG": [{"quality": 80}, {"progressive": True}, {"subsampling": 0}],
        "PNG": [{}, {"optimize": True}],
        "WEBP": [{"lossless": True}, {"quality": 60}],
        "GIF": [{}],
        "BMP": [{}],
        "TIFF": [
            {},
            {"compression": "tiff_lzw"},
            {"compression": "packbits"},
            {"compression": "tiff_deflate"},
        ],
    }[fmt]
    seeds = []
    for image in variants:
        for extra in options:
            buffer = io.BytesIO()
            try:
                image.save(buffer, fmt, **extra)
            except (OSError, ValueError, KeyError):
                continue  # a mode this format cannot store
            seeds.append(buffer.getvalue())
    return seeds


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if len(out) < 16:
            break
        kind = rng.random()
        position = rng.randrange(len(out)) if out else 0
        if kind < 0.4:  # flip a byte, headers more often than pixel data
            position = rng.randrange(min(len(out), 96)) if rng.random() < 0.6 else position
            out[position] = rng.randrange(256)
        elif kind < 0.55:  # a header field set to an extreme value
            value = rng.choice((0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF))
            position = rng.randrange(max(1, min(len(out), 96) - 4))
            out[position : position + 4] = struct.pack(rng.choice("<>") + "I", value)
        elif kind < 0.7:
            out[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind < 0.85:
            del out[position : position + rng.randint(1, 64)]
        else:
            del out[rng.randint(8, max(8, len(out))) :]  # truncated
    return bytes(out)


@contextmanager
def _quiet_stderr():
    """libtiff and libwebp print their complaints to fd 2: keep the test output readable."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_mutated_files_raise_only_image_errors(fmt):
    rng = random.Random(f"fuzz-{fmt}")
    seeds = _seeds(fmt)
    assert seeds, f"no {fmt} seed could be written"
    unexpected: list[str] = []
    decoded = refused = 0
    deadline = time.monotonic() + SECONDS_PER_FORMAT
    with _quiet_stderr():
        for case in range(CASES_PER_FORMAT):
            if time.monotonic() > deadline:
                break
            data = _mutate(rng.choice(seeds), rng)
            try:
                image = finish_decoding(open_image(data, MAX_PIXELS, draft_min_side=64), MAX_PIXELS)
                assert image.mode == "RGB"
                decoded += 1
            except ImageError:
                refused += 1
            except Exception as exc:  # noqa: BLE001 - what this test looks for
                unexpected.append(f"case {case}: {type(exc).__name__}: {exc}")
    assert not unexpected, unexpected[:5]
    assert decoded + refused >= 1000, "too few cases ran in the time bound"
    assert refused > 0 and decoded > 0  # the mutations reach both outcomes
