"""The models a server serves, by name and version: the one place an unknown model becomes
ModelNotFound, and the start-up, draining and shutdown of every model. The single-model
settings of today build a registry of one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from app.errors import ModelNotFound
from app.inference.served_model import ServedModel


class ModelRegistry:
    def __init__(self, models: Iterable[ServedModel]):
        self._models: dict[str, ServedModel] = {}
        for model in models:
            if model.name in self._models:
                raise ValueError(f"two models are named {model.name!r}")
            self._models[model.name] = model

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            served = ", ".join(f"'{n}'" for n in self._models)
            raise ModelNotFound(f"unknown model '{name}'; this server serves {served}")
        model.check_version(version)
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    async def load_all(self) -> None:
        await asyncio.gather(*(model.load() for model in self))

    async def close(self) -> None:
        await asyncio.gather(*(model.close() for model in self))

    def start_draining(self) -> None:
        for model in self:
            model.start_draining()

    @property
    def draining(self) -> bool:
        return any(model.draining for model in self)

    @property
    def ready(self) -> bool:
        return all(model.ready for model in self)

    @property
    def broken(self) -> bool:
        """A model failed to load for good: the server is dead (liveness fails)."""
        return any(model.broken for model in self)
