"""Access to the one InferenceService the app holds."""

from __future__ import annotations

from fastapi import Request

from app.inference.service import InferenceService


def get_service(request: Request) -> InferenceService:
    return request.app.state.service
