"""Images that no earlier request sent: each test's misses are its own."""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from tests.support import data_uri, encode

_seeds = itertools.count(1000)


def new_image_bytes(size: int = 40) -> bytes:
    rng = np.random.default_rng(next(_seeds))
    return encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), quality=90)


def new_image() -> str:
    return data_uri(new_image_bytes())
