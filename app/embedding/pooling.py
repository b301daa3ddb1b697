"""Pooling strategies (no torch here: settings and the protocol layer import this)."""

from __future__ import annotations

import enum


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
