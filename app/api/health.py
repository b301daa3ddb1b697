"""Server health and metadata: /v2/health/live, /v2/health/ready, /v2."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.dependencies import get_plane
from app.api.responses import JSONBytesResponse
from app.dataplane import DataPlane
from app.protocol.schema import ErrorResponse, LiveResponse, ReadyResponse, ServerMetadata

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", response_model=LiveResponse, responses={503: {"model": LiveResponse}})
async def live(plane: DataPlane = Depends(get_plane)):
    return JSONBytesResponse({"live": plane.live}, status_code=200 if plane.live else 503)


@router.get("/v2/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(plane: DataPlane = Depends(get_plane)):
    return JSONBytesResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)


@router.get("/v2", response_model=ServerMetadata, responses={500: {"model": ErrorResponse}})
async def server_metadata(plane: DataPlane = Depends(get_plane)):
    return ServerMetadata(**plane.server_metadata())
