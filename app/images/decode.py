"""Decode image bytes into an RGB Pillow image: only the formats the server supports, limits
from the header before any pixel is decoded and again after, then EXIF orientation, RGB.

Decoding is split in two so that a caller can reserve memory between them: `open_image`
reads the header (cheap, bounded) and says how many pixels the decode will hold;
`finish_decoding` decodes, orients and converts them."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageError

# Formats clients send as photos. Every other plugin Pillow ships stays closed: ICO and ICNS
# decode an embedded PNG while opening (before any size check), and exotic formats (EPS,
# FITS, PSD, ...) are attack surface no client needs.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MIN_SIDE = 2
MAX_ASPECT_RATIO = 50.0
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow's own bomb guard, a second line behind the header check below, must stop an image,
# not log a warning: it raises DecompressionBombError past 2 x MAX_IMAGE_PIXELS (and only
# warns past 1 x), so MAX_IMAGE_PIXELS is set to half the server's limit and the warning,
# which then fires for allowed images, is silenced. An exception, unlike a warning filter
# ("error"), holds in every thread and under every warnings.catch_warnings().
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow warns about odd but decodable files (corrupt EXIF, truncated metadata): not errors.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


# Pillow allocates an image's pixels in blocks of this size. glibc serves an allocation from
# its heaps, where a freed block stays in the process, unless it is larger than its mmap
# threshold, which grows with each freed block up to 32 MiB. With Pillow's default 16 MiB
# blocks, each decoding thread kept the blocks of the largest image it had decoded: 16
# RGBA 6000x6000 PNGs left 1 GiB resident with one decoded at a time. Blocks past 32 MiB
# are always mapped, and unmapped when the image is freed: 290 MiB for the same burst.
PILLOW_BLOCK_BYTES = 64 * 1024 * 1024
Image.core.set_block_size(PILLOW_BLOCK_BYTES)


def set_pillow_pixel_limit(max_pixels: int) -> None:
    """Pillow raises past the server's MAX_IMAGE_PIXELS (one value per process)."""
    Image.MAX_IMAGE_PIXELS = max(1, max_pixels // 2)


set_pillow_pixel_limit(DEFAULT_MAX_PIXELS)


def decode_image(data: bytes, max_pixels: int, draft_min_side: int | None = None) -> Image.Image:
    """RGB image; a JPEG is decoded at a reduced scale (DCT scaling, several times faster)
    when its shorter side stays at least `draft_min_side`."""
    return finish_decoding(open_image(data, max_pixels, draft_min_side), max_pixels)


def open_image(data: bytes, max_pixels: int, draft_min_side: int | None = None) -> Image.Image:
    """The image with only its header read, checked against the limits; `.size` is what
    decoding it will produce (reduced already for a JPEG decoded at draft scale)."""
    if not data:
        raise ImageError("empty image data")
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            f"bytes are not a recognised image format (supported: {', '.join(SUPPORTED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image is over the {max_pixels}-pixel limit: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile headers
        raise ImageError(f"cannot read image header: {_describe(exc)}") from None
    check_size(image.size, max_pixels)
    if draft_min_side and image.format == "JPEG":
        size = draft_size(*image.size, draft_min_side)
        if size is not None:
            try:
                image.draft(None, size)
            except Exception as exc:  # noqa: BLE001
                raise ImageError(f"cannot read image header: {_describe(exc)}") from None
    return image


def finish_decoding(image: Image.Image, max_pixels: int) -> Image.Image:
    """Decode the pixels of an opened image, orient and convert them to RGB. Whatever
    a hostile file makes Pillow raise, the caller gets an ImageError."""
    try:
        image.load()  # the first frame of an animation
        check_size(image.size, max_pixels)  # a header that lied about the size
        ImageOps.exif_transpose(image, in_place=True)  # no copy when nothing turns
        return to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image is over the {max_pixels}-pixel limit: {exc}") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ImageError(f"image data is corrupt or truncated: {_describe(exc)}") from None
    except MemoryError:
        raise ImageError("image needs more memory to decode than this server allows") from None
    except Exception as exc:  # noqa: BLE001 - a malformed file can make any plugin raise anything
        raise ImageError(f"image data is malformed: {_describe(exc)}") from None


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height}, over the {max_pixels}-pixel limit")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image is {width}x{height}, smaller than {MIN_SIDE} pixels on a side")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(f"image is {width}x{height}: aspect ratio over {MAX_ASPECT_RATIO:g}:1")


def _describe(exc: BaseException) -> str:
    # Pillow's messages can quote bytes of the file: keep them short.
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


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
    if image.mode in ("PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        # Paste through the image's own alpha onto one white RGB canvas: a single full-size
        # allocation (compositing onto an RGBA background and converting took three more).
        # Same pixels as alpha_composite (checked in tests/images/test_decode.py).
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image)
        return white
    return image.convert("RGB")
