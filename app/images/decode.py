"""Decode image bytes into an RGB Pillow image: limits first, then EXIF orientation, RGB."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageError

# Pillow's own bomb check warns or raises on its built-in limit; ours runs first, from the
# header, before any pixel is decoded, and the settings decide the limit.
Image.MAX_IMAGE_PIXELS = None

MIN_SIDE = 2
MAX_ASPECT_RATIO = 50.0
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(data: bytes, max_pixels: int, draft_min_side: int | None = None) -> Image.Image:
    """RGB image; a JPEG is decoded at a reduced scale (DCT scaling, several times faster)
    when its shorter side stays at least `draft_min_side`."""
    if not data:
        raise ImageError("empty image data")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("bytes are not a recognised image format") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile headers
        raise ImageError(f"cannot read image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height}, over the {max_pixels}-pixel limit")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image is {width}x{height}, smaller than {MIN_SIDE} pixels on a side")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(f"image is {width}x{height}: aspect ratio over {MAX_ASPECT_RATIO:g}:1")
    if draft_min_side and image.format == "JPEG":
        size = draft_size(width, height, draft_min_side)
        if size is not None:
            image.draft(None, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()  # the first frame of an animation
            ImageOps.exif_transpose(image, in_place=True)  # no copy when nothing turns
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image data is corrupt or truncated: {exc}") from None


def draft_size(width: int, height: int, min_side: int) -> tuple[int, int] | None:
    """The size to ask a JPEG decoder for so that the shorter side stays >= min_side."""
    scale = min_side / min(width, height)
    if scale >= 1:
        return None
    return math.ceil(width * scale), math.ceil(height * scale)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency flattened onto white and 16-bit greys scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image, dtype=np.uint32)
        scale = 257 if array.max(initial=0) > 255 else 1
        return Image.fromarray((array // scale).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
