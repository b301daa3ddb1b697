"""The arithmetic every fast preprocessing path shares (preprocess.py, naflex.py,
open_clip_preprocess.py): numpy and Pillow only, no torch (the decoding threads run it)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def affine(scale: float, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, float32: (x * scale - mean) / std == x * multiply + add, one fused
    multiply-add per value instead of a rescale and a normalise."""
    std = np.asarray(std, np.float32)
    return (scale / std).astype(np.float32), (-np.asarray(mean, np.float32) / std).astype(np.float32)


def processor_affine(processor) -> tuple[np.ndarray, np.ndarray]:
    """`affine` of a transformers image processor's rescale and normalise steps."""
    scale = processor.rescale_factor if processor.do_rescale else 1.0
    mean = processor.image_mean if processor.do_normalize else (0.0, 0.0, 0.0)
    std = processor.image_std if processor.do_normalize else (1.0, 1.0, 1.0)
    return affine(scale, mean, std)


def shortest_edge_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the shorter side resized to `short_side` and the longer one
    scaled and truncated: transformers' shortest_edge and torchvision's Resize(int) alike."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(short_side * long / short)
    return (new_long, short_side) if width <= height else (short_side, new_long)


def normalised_chw(image: Image.Image, multiply: np.ndarray, add: np.ndarray) -> np.ndarray:
    """[3, H, W] float32 of an RGB image, `multiply` and `add` per channel: one multiply into
    the CHW buffer, then one add in place, no temporaries."""
    pixels = np.asarray(image)  # uint8 [H, W, 3]
    chw = np.empty((3, image.height, image.width), dtype=np.float32)
    np.multiply(pixels.transpose(2, 0, 1), multiply.reshape(3, 1, 1), out=chw)
    chw += add.reshape(3, 1, 1)
    return chw
