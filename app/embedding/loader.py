"""Where the model comes from (MODEL_DIR, MODEL_ID folder or hub id, embedded default) and
loading it with its image processor and family adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from app.embedding.default_model import DEFAULT_MODEL_ID, ensure_default_model
from app.embedding.families import FamilyAdapter, OpenClipAdapter, adapter_for
from app.embedding.image_processor import load_image_processor
from app.embedding.model_folder import find_model_folder, is_open_clip_folder
from app.embedding.open_clip_model import OpenClipConfig
from app.embedding.open_clip_model import load as load_open_clip_folder
from app.embedding.preflight import StartupError, remote_code_refusal
from app.embedding.text_tower import TEXT_FAMILIES, TextTower, load_tokenizer
from app.settings.model import ModelSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    location: str  # a folder, or a hub id
    model_id: str  # what responses report as model_id
    origin: str  # for the start-up log
    trust_remote_code: bool = False  # TRUST_REMOTE_CODE: the folder's own modelling code may run


@dataclass
class LoadedModel:
    source: ModelSource
    config: PretrainedConfig
    model: torch.nn.Module
    processor: object
    adapter: FamilyAdapter | None  # None: chosen from the first forward's output
    text: TextTower | None = None  # a full CLIP/SigLIP folder with its tokenizer


def resolve_source(settings: ModelSettings) -> ModelSource:
    mounted = find_model_folder(settings.model_dir)
    if mounted is not None:
        return ModelSource(
            str(mounted),
            settings.model_id or mounted.name,
            f"MODEL_DIR {mounted}",
            settings.trust_remote_code,
        )
    if settings.model_id:
        if Path(settings.model_id).is_dir():
            folder = find_model_folder(Path(settings.model_id))
            if folder is None:
                raise ValueError(f"MODEL_ID folder {settings.model_id} holds no config.json")
            return ModelSource(
                str(folder), settings.model_id, f"local folder {folder}", settings.trust_remote_code
            )
        return ModelSource(
            settings.model_id, settings.model_id, "HuggingFace hub (or its cache)", settings.trust_remote_code
        )
    folder = ensure_default_model(settings.model_cache_dir)
    return ModelSource(str(folder), DEFAULT_MODEL_ID, f"embedded default model, converted at {folder}")


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
