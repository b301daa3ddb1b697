"""Loading the model (model_source.py says where it comes from) with its image processor
and family adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from app.embedding.families import FamilyAdapter, OpenClipAdapter, adapter_for
from app.embedding.image_processor import load_image_processor
from app.embedding.model_folder import is_open_clip_folder
from app.embedding.model_source import ModelSource
from app.embedding.open_clip_model import OpenClipConfig
from app.embedding.open_clip_model import load as load_open_clip_folder
from app.embedding.preflight import StartupError, remote_code_refusal
from app.embedding.text_tower import TEXT_FAMILIES, TextTower, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    source: ModelSource
    config: PretrainedConfig
    model: torch.nn.Module
    processor: object
    adapter: FamilyAdapter | None  # None: chosen from the first forward's output
    text: TextTower | None = None  # a full CLIP/SigLIP folder with its tokenizer


def load_config(location: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The folder's config; a family defined by the folder's own code is refused, saying
    which setting runs it, unless TRUST_REMOTE_CODE allows it."""
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise StartupError(remote_code_refusal(location)) from None


def load_model(source: ModelSource, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    if is_open_clip_folder(source.location):
        return _load_open_clip(source, device, dtype)
    config = load_config(source.location, source.trust_remote_code)
    adapter = adapter_for(config)
    kwargs = {"dtype": dtype}
    text = None
    # One load, two towers: a full CLIP/SigLIP folder with a tokenizer serves text too.
    tokenizer = (
        load_tokenizer(source.location, config.model_type) if config.model_type in TEXT_FAMILIES else None
    )
    if tokenizer is not None and adapter is not None:
        model, text = adapter.load_with_text(source.location, config, tokenizer, **kwargs)
    elif adapter is not None:
        model = adapter.load(source.location, config, **kwargs)
    else:  # a family without an adapter: its own code runs only with TRUST_REMOTE_CODE
        model = FamilyAdapter().load(
            source.location, config, trust_remote_code=source.trust_remote_code, **kwargs
        )
    model = model.to(device).eval()
    processor = load_image_processor(source.location)
    return LoadedModel(source, config, model, processor, adapter, text)


def _load_open_clip(source: ModelSource, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    images, processor, text = load_open_clip_folder(Path(source.location), device, dtype)
    return LoadedModel(source, OpenClipConfig(), images, processor, OpenClipAdapter(), text)
