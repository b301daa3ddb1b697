"""Where in a folder a HuggingFace model's files are (no torch: the repository reads it)."""

from __future__ import annotations

from pathlib import Path


def find_model_folder(folder: Path) -> Path | None:
    """`folder` if it holds a model, or its single sub-folder that does (storageUri layouts)."""
    if (folder / "config.json").is_file():
        return folder
    if folder.is_dir():
        candidates = [p for p in folder.iterdir() if (p / "config.json").is_file()]
        if len(candidates) == 1:
            return candidates[0]
    return None
