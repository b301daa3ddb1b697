"""Pooling strategies (no torch here: settings and the protocol layer import this)."""

from __future__ import annotations

import enum

from app.errors import UnsupportedPooling


class PoolingStrategy(enum.StrEnum):
    """How token or feature-map outputs are reduced to one vector per image."""

    CLS = "cls"
    MEAN = "mean"
    MAX = "max"

    @classmethod
    def parse(cls, value: str) -> PoolingStrategy:
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown pooling strategy {value!r}; expected one of {choices}") from None


def check_supported(
    strategy: PoolingStrategy, supported: tuple[PoolingStrategy, ...], model_id: str, model_type: str
) -> None:
    """Raise UnsupportedPooling (a 400) for a strategy this model's family cannot do."""
    if strategy not in supported:
        choices = ", ".join(p.value for p in supported)
        raise UnsupportedPooling(
            f"pooling strategy '{strategy.value}' is not supported by {model_id} ({model_type}); "
            f"supported: {choices}"
        )
