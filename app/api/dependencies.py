"""What the routes take from the app: the model registry and the body-bytes budget."""

from __future__ import annotations

from fastapi import Request

from app.inference.budgets import ByteBudget
from app.inference.registry import ModelRegistry


def get_models(request: Request) -> ModelRegistry:
    return request.app.state.models


def get_body_budget(request: Request) -> ByteBudget:
    return request.app.state.body_budget
