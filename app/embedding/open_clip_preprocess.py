"""An OpenCLIP model's image preprocessing (open_clip_model.py), without torch: the serving
side imports it, and an OpenVINO export serves it without the open_clip package.

It is read from the model's own preprocess config (size, mean, std, interpolation, resize
mode). The fast path (Pillow and numpy, as for transformers' processors) does what
torchvision's Resize and CenterCrop do to a Pillow image; the package's own transform runs
for the modes it does not cover."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.embedding.pixels import affine, normalised_chw, shortest_edge_size
from app.embedding.preflight import import_open_clip

# The image preprocessing as the loaded model resolved it, written into an OpenVINO export.
PREPROCESS_FILE = "open_clip_preprocess.json"


@dataclass(frozen=True)
class OpenClipProcessor:
    """open_clip's PreprocessCfg for one model: what its image transform does."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # bicubic or bilinear
    resize_mode: str  # shortest (resize, centre crop), squash, or longest (resize, pad)
    fill_color: int = 0

    @classmethod
    def from_dict(cls, cfg: dict) -> OpenClipProcessor:
        size = cfg.get("size", 224)
        return cls(
            size=(size, size) if isinstance(size, int) else (int(size[0]), int(size[1])),
            mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
            fill_color=int(cfg.get("fill_color", 0)),
        )

    @classmethod
    def read(cls, folder: Path) -> OpenClipProcessor:
        return cls.from_dict(json.loads((folder / PREPROCESS_FILE).read_text()))

    def write(self, folder: Path) -> None:
        (folder / PREPROCESS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @property
    def fast_path_covers(self) -> bool:
        """Resize the shorter side and centre-crop a square, or squash: torchvision's Resize
        and CenterCrop on a Pillow image, which the fast path repeats."""
        square = self.size[0] == self.size[1]
        return self.resize_mode == "squash" or (self.resize_mode == "shortest" and square)


class OpenClipPreprocessor:
    """One RGB image -> [3, H, W] float32 as open_clip's inference transform makes it."""

    def __init__(self, processor: OpenClipProcessor, fast: bool = True):
        self.processor = processor
        self.fast = fast and processor.fast_path_covers
        self.height, self.width = processor.size
        bilinear = processor.interpolation == "bilinear"
        self.resample = Image.Resampling.BILINEAR if bilinear else Image.Resampling.BICUBIC
        # ToTensor's x / 255, then Normalize.
        self.multiply, self.add = affine(1 / 255, processor.mean, processor.std)
        # Like the other fast paths: JPEGs decoded at a reduced scale that keeps twice the target.
        self.draft_min_side = 2 * min(processor.size) if self.fast else None
        self._transform = None if self.fast else self._package_transform()

    def _package_transform(self):
        import_open_clip()  # or the StartupError that says how to install it
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = PreprocessCfg(**{**asdict(self.processor), "size": self.processor.size})
        return image_transform_v2(cfg, is_train=False)

    def __call__(self, image: Image.Image) -> np.ndarray:
        if self._transform is not None:
            return np.ascontiguousarray(self._transform(image).numpy(), dtype=np.float32)
        if self.processor.resize_mode == "squash":
            image = image.resize((self.width, self.height), self.resample)
        else:
            # torchvision's Resize(int), then CenterCrop's offsets, rounded as it rounds them.
            height, width = shortest_edge_size(image.width, image.height, self.height)
            if (width, height) != image.size:
                image = image.resize((width, height), self.resample)
            top = int(round((image.height - self.height) / 2.0))
            left = int(round((image.width - self.width) / 2.0))
            image = image.crop((left, top, left + self.width, top + self.height))
        return normalised_chw(image, self.multiply, self.add)

    @staticmethod
    def batch_inputs(stacked: np.ndarray) -> np.ndarray:
        return stacked
