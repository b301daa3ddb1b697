"""Where in a folder a HuggingFace model's files are (no torch: the repository reads it)."""

from __future__ import annotations

from pathlib import Path

OPEN_CLIP_CONFIG = "open_clip_config.json"
# A transformers model's config, or an OpenCLIP checkpoint's (app/embedding/open_clip_model.py).
MODEL_CONFIGS = ("config.json", OPEN_CLIP_CONFIG)


def is_open_clip_folder(folder: str | Path) -> bool:
    return (Path(folder) / OPEN_CLIP_CONFIG).is_file()


def holds_model(folder: Path) -> bool:
    return any((folder / name).is_file() for name in MODEL_CONFIGS)


def find_model_folder(folder: Path) -> Path | None:
    """`folder` if it holds a model, or its single sub-folder that does (storageUri layouts)."""
    if holds_model(folder):
        return folder
    if folder.is_dir():
        candidates = [p for p in folder.iterdir() if holds_model(p)]
        if len(candidates) == 1:
            return candidates[0]
    return None
