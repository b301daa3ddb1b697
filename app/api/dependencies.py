"""What the routes take from the app: the data plane."""

from __future__ import annotations

from fastapi import Request

from app.dataplane import DataPlane


def get_plane(request: Request) -> DataPlane:
    return request.app.state.plane
