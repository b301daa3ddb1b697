"""A folder's contents as one digest (cache keys: model files, calibration images), and a
manifest of each file's size and digest (an export folder checked before it is reused)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_files(folder: Path) -> list[Path]:
    """Every file under `folder` (any depth, hidden ones skipped), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))


# Digests already computed in this process, by the files' paths, sizes and mtimes: one start-up
# asks for a model folder's digest once per OpenVINO candidate and again for RUNTIME=auto's
# decision, and reading a multi-GB model each time would cost seconds every time.
_DIGESTS: dict[tuple, str] = {}


def folder_digest(folder: Path) -> str:
    """sha256 over each file's relative path and contents: renaming or editing any file changes it."""
    files = folder_files(folder)
    stats = [path.stat() for path in files]
    signature = (
        str(folder),
        *((str(p), s.st_size, s.st_mtime_ns) for p, s in zip(files, stats, strict=True)),
    )
    cached = _DIGESTS.get(signature)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    _DIGESTS[signature] = digest.hexdigest()
    return _DIGESTS[signature]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def folder_manifest(folder: Path, exclude: str) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file but `exclude`."""
    return {
        str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in folder_files(folder)
        if path.name != exclude
    }


def manifest_mismatch(folder: Path, manifest: dict[str, dict]) -> str | None:
    """Why the folder no longer matches its manifest (sizes first: cheap), or None."""
    for name, expected in manifest.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} were written"
    for name, expected in manifest.items():
        if file_sha256(Path(folder) / name) != expected["sha256"]:
            return f"{name} does not match the digest written with it"
    return None
