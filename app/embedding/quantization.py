"""int8 post-training quantization with NNCF, checked against float32 on images held out
from calibration.

What it took on the real MobileNetV2 (min cosine to float32 on 32 photos held out from
calibration; docs/runtimes.md, "OpenVINO, float32 and int8"): NNCF's defaults 0.971; full bias
correction 0.978; the stem and head (first and last 10% of the weighted layers) kept in
float 0.991; then NNCF's accuracy-controlled quantization, reverting layers to float, most
harmful first, until the held-out quarter's minimum cosine is within
QUANTIZE_MAX_COSINE_DROP of 1: 0.9956, every nearest neighbour kept. Accuracy control alone
reverted 27 of 63 layers and still reached only 0.985. Transformer families are quantized
as NNCF's transformer model type."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from app.embedding.fidelity import compare, l2_normalised
from app.embedding.file_digest import folder_files
from app.embedding.preflight import MIN_CALIBRATION_IMAGES, StartupError, import_nncf
from app.images.decode import SUPPORTED_FORMATS, to_rgb

log = logging.getLogger(__name__)

HELD_OUT_EVERY = 4  # every 4th image (sorted by name) checks the result instead of calibrating
KEPT_IN_FLOAT = 0.1  # the first and last 10% of the weighted layers stay in float


def calibration_pixels(folder: Path, preprocess: Callable[[Image.Image], np.ndarray]) -> list[np.ndarray]:
    """The folder's readable images (any depth, sorted by path), each preprocessed as soon
    as it is decoded: memory holds one photo at full size and the model inputs, however
    large and many the photos are. Unreadable files are skipped."""
    pixels = []
    for path in folder_files(folder):
        try:
            with Image.open(path, formats=SUPPORTED_FORMATS) as image:
                image.load()
                rgb = to_rgb(ImageOps.exif_transpose(image))
        except Exception as exc:  # noqa: BLE001 - a stray file is skipped, not fatal
            log.warning("calibration: skipping %s (%s)", path, exc)
            continue
        pixels.append(preprocess(rgb))
        del rgb
    if len(pixels) < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"CALIBRATION_DIR {folder} holds {len(pixels)} readable images; QUANTIZE=int8 needs at "
            f"least {MIN_CALIBRATION_IMAGES} (a few hundred like the ones you will embed is better)"
        )
    return pixels


def split_held_out(items: list) -> tuple[list, list]:
    """(calibration, held out): every HELD_OUT_EVERY-th item is held out."""
    held = [item for i, item in enumerate(items) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    calibration = [item for i, item in enumerate(items) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return calibration, held


def quantize_int8(model, pixels: list[np.ndarray], output: str, transformer: bool, max_drop: float):
    """(int8 ov.Model, Fidelity on the held-out images). `pixels`: one preprocessed
    [3, H, W] image each; `output`: the pooled output the check compares."""
    import openvino as ov

    nncf = import_nncf()

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step lines; ours sums them up
    calibration, held_out = split_held_out([p[None] for p in pixels])
    reference = _embed(ov.Core().compile_model(model, "CPU", _FLOAT32), held_out, output)
    references = list(zip(held_out, reference, strict=True))

    def min_cosine(compiled, items) -> tuple[float, list[float]]:
        cosines = [float(l2_normalised(compiled(p)[output])[0] @ ref) for p, ref in items]
        return min(cosines), cosines

    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calibration),
        nncf.Dataset(references, lambda item: item[0]),
        validation_fn=min_cosine,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calibration),
        fast_bias_correction=False,
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        ignored_scope=nncf.IgnoredScope(names=outer_layers(model), validate=False),
    )
    candidate = _embed(ov.Core().compile_model(quantized, "CPU", _FLOAT32), held_out, output)
    return quantized, compare(reference, candidate)


# Compare against true float32: OpenVINO would otherwise run float ops in bf16 where the CPU has it.
_FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32"}


def outer_layers(model, fraction: float = KEPT_IN_FLOAT) -> list[str]:
    """The first and last `fraction` of the layers with weights (convolutions, matrix
    products), in graph order: the stem sees raw pixels and the head writes the embedding."""
    layers = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
    ]
    keep = max(1, round(len(layers) * fraction))
    return layers[:keep] + layers[-keep:]


def _embed(compiled, pixels: list[np.ndarray], output: str) -> np.ndarray:
    return l2_normalised(np.concatenate([compiled(p)[output] for p in pixels]))


def check_fidelity_gate(fidelity: dict, max_cosine_drop: float, min_neighbours_kept: float) -> None:
    """An int8 model is served only when a search over its embeddings would find what
    float32's finds: every held-out image (or the share asked for) keeps its nearest
    neighbour, and the minimum cosine to float32 is within the allowed drop."""

    images, kept, min_cosine = fidelity["images"], fidelity["neighbours_kept"], fidelity["min_cosine"]
    needed = math.ceil(min_neighbours_kept * images - 1e-9)
    if kept >= needed and min_cosine >= 1 - max_cosine_drop - 1e-9:
        return
    raise StartupError(
        f"QUANTIZE=int8: on the {images} held-out calibration images the int8 model kept the nearest "
        f"neighbour of {kept}/{images} (QUANTIZE_MIN_NEIGHBOURS_KEPT={min_neighbours_kept:g} needs {needed}) "
        f"with min cosine {min_cosine:.5f} (QUANTIZE_MAX_COSINE_DROP={max_cosine_drop:g} needs "
        f"{1 - max_cosine_drop:.5f}); add more calibration photos like the ones you embed, or "
        "allow a larger loss with those settings, or serve float32 (unset QUANTIZE)"
    )
