"""What the routes take from the app: the data plane."""

from __future__ import annotations

from fastapi import Request

from app.dataplane import DataPlane


async def get_plane(request: Request) -> DataPlane:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop (and a
    # wake-up) on every request for an attribute read.
    return request.app.state.plane
