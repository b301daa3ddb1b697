"""The model folder's image processor, also where transformers' own class needs torchvision.

DINOv3's processor (DINOv3ViTImageProcessor) exists only as a torchvision class, and
torchvision is not installed beside the CPU torch (PyPI's build is CUDA-only). Its pipeline
is a plain resize to a fixed size, rescale and normalise: the same steps run through
transformers' Pillow processor for DINOv2 (BitImageProcessorPil), from the folder's own
settings. The one difference: DINOv3's resizes the rescaled float image, Pillow the 8-bit
one (a rounding of at most half a level per pixel before normalising)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# transformers' class (its name without the old "Fast" suffix) -> the steps a Pillow
# processor can run instead: only processors made of resize, rescale and normalise.
_PILLOW_EQUIVALENTS = {"DINOv3ViTImageProcessor"}


def load_image_processor(location: str):
    from transformers import AutoImageProcessor

    from app.embedding.open_clip_preprocess import PREPROCESS_FILE, OpenClipProcessor

    if (Path(location) / PREPROCESS_FILE).is_file():  # an OpenVINO export of an OpenCLIP model
        return OpenClipProcessor.read(Path(location))

    try:
        return AutoImageProcessor.from_pretrained(location)
    except ImportError as exc:
        replacement = _pillow_equivalent(location)
        if replacement is None:
            raise ValueError(
                f"{location}'s image processor needs a package that is not installed: {exc}"
            ) from None
        return replacement
    except (OSError, ValueError) as exc:
        raise ValueError(f"{location} has no usable image processor config: {exc}") from None


def _pillow_equivalent(location: str):
    from transformers import BitImageProcessorPil
    from transformers.image_processing_base import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(location)
    name = str(config.get("image_processor_type", "")).removesuffix("Fast")
    if name not in _PILLOW_EQUIVALENTS or config.get("do_center_crop"):
        return None
    size = config.get("size") or {"height": 224, "width": 224}
    log.info("%s: %s needs torchvision; its resize and normalisation run through Pillow", location, name)
    return BitImageProcessorPil(
        do_resize=config.get("do_resize", True),
        size={"height": int(size["height"]), "width": int(size["width"])},
        resample=config.get("resample", 2),  # bilinear, DINOv3's default
        do_center_crop=False,
        do_rescale=config.get("do_rescale", True),
        rescale_factor=config.get("rescale_factor", 1 / 255),
        do_normalize=config.get("do_normalize", True),
        image_mean=config.get("image_mean", (0.485, 0.456, 0.406)),
        image_std=config.get("image_std", (0.229, 0.224, 0.225)),
        do_convert_rgb=True,
    )
