"""The model with its family's pooling inside the graph, for runtimes that run a converted
graph (OpenVINO): pixel_values -> one unnormalised [n, D] output per supported pooling, named
by the pooling. Normalisation stays outside (a per-request choice)."""

from __future__ import annotations

import torch

from app.embedding.families import FamilyAdapter, generic_adapter
from app.embedding.loader import LoadedModel


class PooledOutputs(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, adapter: FamilyAdapter):
        super().__init__()
        self.model = model
        self.adapter = adapter

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values=pixel_values)
        return tuple(self.adapter.pool(outputs, strategy).float() for strategy in self.adapter.supported)


def resolve_adapter(loaded: LoadedModel, probe: torch.Tensor) -> FamilyAdapter:
    """The family's adapter or, for an unknown family, the generic rule from one forward."""
    if loaded.adapter is not None:
        return loaded.adapter
    with torch.inference_mode():
        hidden = loaded.model(pixel_values=probe).last_hidden_state
    return generic_adapter(hidden)
