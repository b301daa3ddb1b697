"""Which models a server serves, each with its own settings: one model from MODEL_ID (the
default, as before), or every sub-folder of MODEL_REPOSITORY. A model folder may hold
`serving.json` with the per-model settings below; everything else (limits, fetching,
budgets) is the server's and shared by all models."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from app.embedding.model_folder import find_model_folder
from app.settings import with_cpu_share
from app.settings.model import REPOSITORY_FIXED, ModelSettings
from app.settings.server import ServerSettings

log = logging.getLogger(__name__)

SETTINGS_FILE = "serving.json"
# The settings a model may set for itself: how it is loaded, run and pooled.
PER_MODEL_SETTINGS = frozenset(ModelSettings.model_fields) - REPOSITORY_FIXED
LOAD_AT_STARTUP = "load_at_startup"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RepositoryError(ValueError):
    """A model folder or its serving.json that the server cannot start with."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    settings: ModelSettings
    load_at_startup: bool = True


def model_configs(server: ServerSettings, model: ModelSettings) -> list[ModelConfig]:
    """MODEL_ID's one model (`model`), or a model per MODEL_REPOSITORY folder, each with the
    environment's model settings (`model`) and its serving.json on top."""
    if server.model_repository is None:
        return [ModelConfig(model.served_model_name, model)]
    configs = []
    for folder in sorted(server.model_repository.iterdir()):
        if not folder.is_dir() or folder.name.startswith(".") or folder.name == "lost+found":
            continue
        config = _folder_config(folder, model, server.workers)
        if config is not None:
            configs.append(config)
    if not configs:
        raise RepositoryError(f"MODEL_REPOSITORY {server.model_repository} holds no model folder")
    return configs


def _folder_config(folder: Path, defaults: ModelSettings, workers: int) -> ModelConfig | None:
    if not _NAME.match(folder.name):
        log.warning(
            "model repository: skipping %r: a model name is letters, digits, '.', '_', '-'", folder.name
        )
        return None
    own = read_settings_file(folder / SETTINGS_FILE)
    load_at_startup = own.pop(LOAD_AT_STARTUP, True)
    if not isinstance(load_at_startup, bool):
        raise RepositoryError(f"{folder / SETTINGS_FILE}: {LOAD_AT_STARTUP} must be true or false")
    if "model_id" not in own and find_model_folder(folder) is None:
        log.warning(
            "model repository: skipping %s: no config.json and no model_id in %s", folder, SETTINGS_FILE
        )
        return None
    values = defaults.model_dump()
    # The folder is the model's MODEL_DIR: its files (or its one model sub-folder) come first.
    # Every value is passed, None included, so that none comes from the environment instead.
    values.update(model_id=None, model_dir=folder, model_name=folder.name)
    values.update(own)
    try:
        settings = with_cpu_share(ModelSettings(**values), workers)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise RepositoryError(f"{folder / SETTINGS_FILE}: {problems}") from None
    return ModelConfig(folder.name, settings, load_at_startup)


def read_settings_file(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        own = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(own, dict):
        raise RepositoryError(f"{path}: must be a JSON object of settings")
    unknown = sorted(set(own) - PER_MODEL_SETTINGS - {LOAD_AT_STARTUP})
    if unknown:
        allowed = ", ".join(sorted(PER_MODEL_SETTINGS | {LOAD_AT_STARTUP}))
        raise RepositoryError(f"{path}: unknown setting(s) {', '.join(unknown)}; a model may set {allowed}")
    return own
