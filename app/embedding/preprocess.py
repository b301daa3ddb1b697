"""Image -> model input tensor, one image at a time (so it runs in the decoding threads,
overlapping the forward pass).

For the common processors (resize, optional centre crop, rescale, normalise) a direct
path replaces the transformers processor: Pillow's antialiased resize on the uint8 image
(what the processor itself calls) of just the region the centre crop keeps, then one
multiply-add in numpy (a 640x480 JPEG data URI, base64 to tensor: 4.2 ms, was 8.8). It gives
the processor's embeddings to cosine 0.99999 at a fraction of its cost. No torch op runs
here: torch's OpenMP teams in several decoding threads would fight the forward pass's
threads for the cores (measured: half the throughput). Any other processor is called as
it is. Both give numpy [3, H, W] float32: the runtime backends' common input. SigLIP 2
NaFlex processors (variable patch grids) take their own path: naflex.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from app.embedding.backend import ImagePreprocessor
from app.embedding.naflex import NaflexPreprocessor, is_naflex_processor
from app.embedding.open_clip_preprocess import OpenClipPreprocessor, OpenClipProcessor
from app.embedding.pixels import normalised_chw, processor_affine, shortest_edge_size

log = logging.getLogger(__name__)

# Processors whose whole pipeline is resize -> [centre crop] -> rescale -> normalise.
_SIMPLE_PROCESSORS = (
    "BitImageProcessor",
    "CLIPImageProcessor",
    "MobileNetV2ImageProcessor",
    "ViTImageProcessor",
    "SiglipImageProcessor",
    "DeiTImageProcessor",
)
_RESAMPLING = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
# In an OpenVINO export: the fast path's steps (FastPreprocessor.steps), so that serving it
# needs neither transformers nor torch.
FAST_STEPS_FILE = "fast_preprocess.json"


class Preprocessor:
    """Calls the model's own image processor on one image."""

    fast = False

    def __init__(self, processor):
        self.processor = processor
        self.draft_min_side = None  # no reduced-scale decoding: the processor decides

    def __call__(self, image: Image.Image) -> np.ndarray:
        # numpy, not torch: a torch op in a decoding thread would give it an OpenMP team.
        pixels = self.processor(images=[image], return_tensors="np")["pixel_values"][0]
        return np.ascontiguousarray(pixels, dtype=np.float32)

    @staticmethod
    def batch_inputs(stacked: np.ndarray) -> np.ndarray:
        return stacked  # every image has the same shape


class FastPreprocessor(Preprocessor):
    """Pillow and numpy for simple resize/crop/normalise processors."""

    fast = True
    _load_processor: Callable[[], Any]  # only from_steps' instances start without the processor

    def __init__(self, processor, resize: tuple[str, Any], crop: tuple[int, int] | None):
        super().__init__(processor)
        self._set_steps(resize, crop, Image.Resampling(processor.resample), processor_affine(processor))

    @classmethod
    def from_steps(cls, steps: dict, load_processor: Callable[[], Any]) -> FastPreprocessor:
        """The same path from the steps `steps()` wrote into an OpenVINO export: no
        transformers import (seconds of start-up) until an image needs the processor
        itself (one smaller than the crop), when `load_processor` gives it."""
        self = cls.__new__(cls)
        Preprocessor.__init__(self, None)
        self._load_processor = load_processor
        resize_to = steps["resize_to"]
        self._set_steps(
            (steps["resize_kind"], resize_to if isinstance(resize_to, int) else tuple(resize_to)),
            tuple(steps["crop"]) if steps["crop"] is not None else None,
            Image.Resampling(steps["resample"]),
            (np.asarray(steps["multiply"], np.float32), np.asarray(steps["add"], np.float32)),
        )
        return self

    def steps(self) -> dict:
        """What from_steps needs, as JSON (float32 values survive the round trip exactly)."""
        return {
            "resize_kind": self.resize_kind,
            "resize_to": self.resize_to,
            "crop": self.crop,
            "resample": int(self.resample),
            "multiply": [float(value) for value in self.multiply],
            "add": [float(value) for value in self.add],
        }

    def _set_steps(self, resize, crop, resample, affine) -> None:
        # shortest_edge: an int; size: a (height, width) pair.
        self.resize_kind, self.resize_to = resize
        self.crop = crop
        self.resample = resample
        self.multiply, self.add = affine
        target = self.resize_to if self.resize_kind == "shortest_edge" else min(self.resize_to)
        # JPEG draft decoding must leave about twice the resize target: asking for exactly the
        # target loses detail the antialiased resize would have used (cosine 0.986 vs 0.9999).
        self.draft_min_side = 2 * target

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after the resize, as transformers computes it."""
        if self.resize_kind == "size":
            return self.resize_to
        return shortest_edge_size(width, height, self.resize_to)

    def __call__(self, image: Image.Image) -> np.ndarray:
        height, width = self.output_size(image.width, image.height)
        if self.crop is None:
            if (height, width) != (image.height, image.width):
                image = image.resize((width, height), self.resample)
        else:
            crop_h, crop_w = self.crop
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            if top < 0 or left < 0:
                return self._through_processor(image)  # the processor pads images smaller than the crop
            if (height, width) == (image.height, image.width):
                image = image.crop((left, top, left + crop_w, top + crop_h))
            else:
                # Resize only the source region the crop keeps: the same filter centres and
                # weights as resizing everything and cropping after (pixels differ by at most
                # one level in rounding), for a third less work.
                scale_x, scale_y = image.width / width, image.height / height
                box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
                image = image.resize((crop_w, crop_h), self.resample, box=box)
        return normalised_chw(image, self.multiply, self.add)

    def _through_processor(self, image: Image.Image) -> np.ndarray:
        if self.processor is None:  # made from an export's steps: load it once, in any thread
            with _LOADING_PROCESSOR:
                if self.processor is None:
                    self.processor = self._load_processor()
        return super().__call__(image)


_LOADING_PROCESSOR = threading.Lock()


def probe_image() -> Image.Image:
    """A plain grey image: one forward of it tells a model's input and output sizes."""
    return Image.new("RGB", (64, 64), (128, 128, 128))


def make_preprocessor(
    processor, allow_fast: bool = True, max_num_patches: int | None = None
) -> ImagePreprocessor:
    """The image path for the folder's processor; `max_num_patches` (MAX_NUM_PATCHES)
    replaces a NaFlex processor's own."""
    if is_naflex_processor(processor):
        return NaflexPreprocessor(processor, fast=allow_fast, max_patches=max_num_patches)
    if isinstance(processor, OpenClipProcessor):
        return OpenClipPreprocessor(processor, fast=allow_fast)
    if max_num_patches:
        log.warning(
            "MAX_NUM_PATCHES=%d ignored: it sizes SigLIP 2 NaFlex inputs; this model's processor (%s) "
            "has a fixed input size",
            max_num_patches,
            type(processor).__name__,
        )
    if allow_fast:
        plan = _fast_plan(processor)
        if plan is not None:
            return FastPreprocessor(processor, *plan)
    return Preprocessor(processor)


def fast_steps(processor) -> dict | None:
    """FastPreprocessor's steps for this processor, or None where it has no fast path: what
    an OpenVINO export writes down (FAST_STEPS_FILE) to serve without transformers."""
    plan = _fast_plan(processor)
    return FastPreprocessor(processor, *plan).steps() if plan is not None else None


def _fast_plan(processor):
    name = type(processor).__name__.removesuffix("Pil").removesuffix("Fast")
    if name not in _SIMPLE_PROCESSORS or not getattr(processor, "do_resize", False):
        return None
    if getattr(processor, "do_pad", False) or getattr(processor, "crop_pct", None):
        return None
    try:
        if Image.Resampling(processor.resample) not in _RESAMPLING:
            return None
    except ValueError:
        return None
    size = processor.size
    if getattr(size, "shortest_edge", None) and not getattr(size, "height", None):
        resize = ("shortest_edge", int(size.shortest_edge))
    elif getattr(size, "height", None) and getattr(size, "width", None):
        resize = ("size", (int(size.height), int(size.width)))
    else:
        return None
    crop = None
    if getattr(processor, "do_center_crop", False):
        crop_size = processor.crop_size
        if not (getattr(crop_size, "height", None) and getattr(crop_size, "width", None)):
            return None
        crop = (int(crop_size.height), int(crop_size.width))
    return resize, crop
