"""Where the model comes from: MODEL_DIR, a MODEL_ID folder or hub id, or the embedded
default. No torch or transformers here: serving an OpenVINO export never imports them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.embedding.default_model import DEFAULT_MODEL_ID, ensure_default_model
from app.embedding.model_folder import find_model_folder
from app.settings.model import ModelSettings


@dataclass(frozen=True)
class ModelSource:
    location: str  # a folder, or a hub id
    model_id: str  # what responses report as model_id
    origin: str  # for the start-up log
    trust_remote_code: bool = False  # TRUST_REMOTE_CODE: the folder's own modelling code may run


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
