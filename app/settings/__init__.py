"""What one start-up reads: every environment variable and `python -m app` flag, the
server's (server.py) and the model's (model.py), checked together and then split in two:
`Settings.server` for the server, `Settings.model` for the model it serves (a
MODEL_REPOSITORY's models start from it, see app/inference/model_configs.py)."""

from __future__ import annotations

from pydantic import model_validator

from app.cpus import usable_cpus
from app.settings.model import DEFAULT_CACHE_DIR, SETTINGS_CONFIG, ModelSettings
from app.settings.server import ServerSettings


class Settings(ServerSettings, ModelSettings):
    """Every field is an environment variable (upper case) and a `--kebab-case` flag."""

    model_config = SETTINGS_CONFIG

    @model_validator(mode="after")
    def _one_source_of_models(self) -> Settings:
        if self.model_repository is not None and self.model_id is not None:
            raise ValueError("set MODEL_ID (one model) or MODEL_REPOSITORY (a folder of models), not both")
        return self

    @property
    def server(self) -> ServerSettings:
        # Validated already: construct without reading the environment again.
        return ServerSettings.model_construct(
            **{name: getattr(self, name) for name in ServerSettings.model_fields}
        )

    @property
    def model(self) -> ModelSettings:
        values = {name: getattr(self, name) for name in ModelSettings.model_fields}
        return with_cpu_share(ModelSettings.model_construct(**values), self.workers)


def with_cpu_share(model: ModelSettings, workers: int) -> ModelSettings:
    """TORCH_THREADS=0 means this process's share of the usable cores: resolved here, where
    WORKERS is known, so that a backend needs its model's settings only."""
    if model.torch_threads:
        return model
    return model.model_copy(update={"torch_threads": max(1, usable_cpus() // workers)})


def settings_markdown_table() -> str:
    """The tables of docs/settings.md, generated so that a test keeps the two equal."""
    return "\n\n".join(
        [
            "### Model settings (per model; `serving.json` may set them)",
            _table(ModelSettings),
            "### Server settings",
            _table(ServerSettings),
        ]
    )


def _table(kind: type[ModelSettings] | type[ServerSettings]) -> str:
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for name, field in kind.model_fields.items():
        default = field.default
        default = getattr(default, "value", default)
        if field.default == DEFAULT_CACHE_DIR:
            default = "~/.cache/image-embed"
        shown = "unset" if default is None else f"`{default}`"
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `{name.upper()}` | `{flag}` | {shown} | {field.description} |")
    return "\n".join(rows)
