"""A folder's contents as one digest (cache keys: model files, calibration images)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_files(folder: Path) -> list[Path]:
    """Every file under `folder` (any depth, hidden ones skipped), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))


def folder_digest(folder: Path) -> str:
    """sha256 over each file's relative path and contents: renaming or editing any file changes it."""
    digest = hashlib.sha256()
    for path in folder_files(folder):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()
