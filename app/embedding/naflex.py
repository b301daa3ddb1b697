"""SigLIP 2 NaFlex (model_type siglip2): each image keeps its aspect ratio and becomes a
variable number of patches, at most `max_num_patches` (the folder's processor setting, or
MAX_NUM_PATCHES).

Across the backend seam a NaFlex image is still one float32 array of a fixed shape, so
that the batcher, the budgets, the cache and both runtimes treat it like any other image:
[1 + P, 3·p·p] for P = max_num_patches and patch side p. Row 0 holds the image's patch
grid (rows, columns) in its first two values; rows 1 .. rows·columns hold its patches in
transformers' layout (raster order, each patch as (y, x, channel)); the rest are zeros.
Before a forward, a batch is cut to its longest image (`batch_inputs`): images of
different shapes share a forward padded only to the batch's patch count, and the model
wrapper (families.py, NaflexImages) rebuilds `pixel_attention_mask` and `spatial_shapes`
from row 0, so an image's embedding does not depend on what it was batched with. No torch
here: the serving side imports this module."""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.embedding.pixels import processor_affine

NAFLEX_PROCESSORS = ("Siglip2ImageProcessor",)


def is_naflex_processor(processor) -> bool:
    return type(processor).__name__.removesuffix("Pil").removesuffix("Fast") in NAFLEX_PROCESSORS


class NaflexPreprocessor:
    """One RGB image -> the packed [1 + P, 3·p·p] array. `fast`: Pillow's resize of the 8-bit
    image (what the processor itself calls) and one multiply-add per value in numpy, equal
    to the processor's output; otherwise the processor runs as it is."""

    # The patch grid follows from the exact image size: a JPEG decoded at a reduced scale
    # could land on another grid (another embedding), so images are always decoded whole.
    draft_min_side = None

    def __init__(self, processor, fast: bool = True, max_patches: int | None = None):
        self.processor = processor
        self.fast = fast
        self.patch = int(processor.patch_size)
        self.max_patches = int(max_patches or processor.max_num_patches)
        self.resample = Image.Resampling(processor.resample)
        # Per value of a patch laid out (y, x, channel): its channel's multiply-add.
        multiply, add = processor_affine(processor)
        repeats = self.patch * self.patch
        self.multiply, self.add = np.tile(multiply, repeats), np.tile(add, repeats)

    @property
    def input_shape(self) -> tuple[int, int]:
        return 1 + self.max_patches, 3 * self.patch * self.patch

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, columns) of patches for an image of this size, as the processor sizes it."""
        from transformers.models.siglip2.image_processing_pil_siglip2 import (
            get_image_size_for_max_num_patches,
        )

        target_height, target_width = get_image_size_for_max_num_patches(
            height, width, self.patch, self.max_patches
        )
        return target_height // self.patch, target_width // self.patch

    def __call__(self, image: Image.Image) -> np.ndarray:
        packed = np.zeros(self.input_shape, dtype=np.float32)
        if self.fast:
            rows, columns = self.grid(image.width, image.height)
            size = (columns * self.patch, rows * self.patch)
            if image.size != size:
                image = image.resize(size, self.resample)
            pixels = np.asarray(image)  # uint8 [H, W, 3]
            p, count = self.patch, rows * columns
            # [H, W, 3] -> [rows, columns, p, p, 3] -> one row per patch, as the processor lays it out.
            patches = pixels.reshape(rows, p, columns, p, 3).transpose(0, 2, 1, 3, 4).reshape(count, -1)
            np.multiply(patches, self.multiply, out=packed[1 : 1 + count])
            packed[1 : 1 + count] += self.add
        else:
            features = self.processor(images=[image], max_num_patches=self.max_patches, return_tensors="np")
            rows, columns = (int(v) for v in features["spatial_shapes"][0])
            packed[1:] = features["pixel_values"][0]
        packed[0, :2] = (rows, columns)
        return packed

    @staticmethod
    def batch_inputs(stacked: np.ndarray) -> np.ndarray:
        """The stacked batch cut to its longest image's patches (rows after it are padding
        in every image)."""
        longest = int((stacked[:, 0, 0] * stacked[:, 0, 1]).max(initial=1))
        return stacked[:, : 1 + longest]
