from __future__ import annotations

import os

# Tests never reach the model hub; set before transformers is imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_models import FAMILIES, TEXT_FAMILIES, build_text_model, build_tiny_model  # noqa: E402

# tests/openclip/ needs open_clip_torch and the torchvision it imports, which cannot be
# installed beside this machine's CPU torch: scripts/check runs it in a venv of its own
# (scripts/openclip-venv).
collect_ignore = [] if importlib.util.find_spec("open_clip") else ["openclip"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """family -> folder of a tiny random-weight model with its image processor."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def text_models(tmp_path_factory) -> dict[str, Path]:
    """family -> folder of a tiny full CLIP / SigLIP model with its tokenizer."""
    root = tmp_path_factory.mktemp("text-models")
    return {family: build_text_model(family, root / family) for family in TEXT_FAMILIES}


@pytest.fixture(scope="session")
def default_model_cache(tmp_path_factory) -> Path:
    """A cache folder holding the embedded MobileNetV2, converted once per session."""
    from app.embedding.default_model import ensure_default_model

    cache = tmp_path_factory.mktemp("model-cache")
    ensure_default_model(cache)
    return cache
