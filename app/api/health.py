"""Server health and metadata: /v2/health/live, /v2/health/ready, /v2."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app import __version__
from app.api.dependencies import get_service
from app.api.responses import JSONBytesResponse
from app.inference.service import InferenceService
from app.protocol.schema import ErrorResponse, LiveResponse, ReadyResponse, ServerMetadata

SERVER_NAME = "image-embed-server"
# Only what really works: binary tensor data on requests and responses, and statistics.
EXTENSIONS = ["binary_tensor_data", "statistics"]

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", response_model=LiveResponse, responses={503: {"model": LiveResponse}})
async def live(service: InferenceService = Depends(get_service)):
    # A model that failed to load for good is a dead server: let the orchestrator restart it.
    alive = not service.broken
    return JSONBytesResponse({"live": alive}, status_code=200 if alive else 503)


@router.get("/v2/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(service: InferenceService = Depends(get_service)):
    return JSONBytesResponse({"ready": service.ready}, status_code=200 if service.ready else 503)


@router.get("/v2", response_model=ServerMetadata, responses={500: {"model": ErrorResponse}})
async def server_metadata():
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)
