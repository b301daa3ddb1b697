"""Server health and metadata: /v2/health/live, /v2/health/ready, /v2."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app import __version__
from app.api.dependencies import get_models
from app.api.responses import JSONBytesResponse
from app.inference.registry import ModelRegistry
from app.protocol.schema import ErrorResponse, LiveResponse, ReadyResponse, ServerMetadata

SERVER_NAME = "image-embed-server"
# Only what really works: binary tensor data on requests and responses, and statistics.
EXTENSIONS = ["binary_tensor_data", "statistics"]

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", response_model=LiveResponse, responses={503: {"model": LiveResponse}})
async def live(models: ModelRegistry = Depends(get_models)):
    # A model that failed to load for good is a dead server: let the orchestrator restart it.
    alive = not models.broken
    return JSONBytesResponse({"live": alive}, status_code=200 if alive else 503)


@router.get("/v2/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(models: ModelRegistry = Depends(get_models)):
    return JSONBytesResponse({"ready": models.ready}, status_code=200 if models.ready else 503)


@router.get("/v2", response_model=ServerMetadata, responses={500: {"model": ErrorResponse}})
async def server_metadata():
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)
