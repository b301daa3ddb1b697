"""Cache keys: what an embedding depends on. An entry is found only by the same input bytes
under the same model files, runtime, precision, preprocessing and pooling: a model reloaded
from changed files, an int8 export of it or another pooling never reads another's entries.
Normalisation is not in the key: entries hold the unnormalised vector and each answer
normalises its own copy, so one entry serves both."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from app import __version__
from app.embedding.pooling import PoolingStrategy
from app.settings.model import ModelSettings

# Raised when the meaning of a stored entry changes (its layout, what the key covers).
CACHE_FORMAT = 1


def model_identity(settings: ModelSettings, files: Path, runtime: dict[str, str]) -> str:
    """One digest of everything about a loaded model that changes its embeddings: its files'
    contents (not its name), the backend's platform, device and dtype (an int8 export is
    not a float32 one), the settings that change preprocessing, and the versions of the
    code that computes them (this server's, which holds its preprocessing, and the runtimes')."""
    import numpy
    import PIL

    from app.embedding.file_digest import folder_digest

    material = {
        "format": CACHE_FORMAT,
        "files": folder_digest(files),
        "runtime": runtime,
        "fast_preprocessing": settings.fast_preprocessing,
        "versions": [__version__, numpy.__version__, PIL.__version__, *_runtime_versions(runtime)],
    }
    if settings.max_num_patches:  # NaFlex: another patch budget, other embeddings
        material["max_num_patches"] = settings.max_num_patches
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _runtime_versions(runtime: dict[str, str]) -> list[str]:
    # The installed versions, read without importing torch and transformers (seconds that
    # an OpenVINO model's start-up does not otherwise spend); the same strings as __version__.
    from importlib.metadata import version

    versions = [version("torch"), version("transformers")]
    if runtime.get("platform") == "openvino":
        import openvino

        versions.append(openvino.__version__)
    return versions


def entry_key(identity: str, modality: str, content_sha256: bytes, pooling: PoolingStrategy) -> bytes:
    """The 32-byte key of one input's embedding (its bytes' sha256, the model's identity,
    the tower it went through and its pooling)."""
    material = f"{identity}\0{modality}\0{pooling.value}\0".encode() + content_sha256
    return hashlib.sha256(material).digest()
