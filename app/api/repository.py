"""The V2 model repository extension (Triton's REST shape): index, load, unload."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import TypeAdapter, ValidationError

from app.api.dependencies import get_plane
from app.api.responses import JSONBytesResponse
from app.dataplane import DataPlane
from app.errors import BadRequest
from app.protocol.request import describe_validation_error
from app.protocol.schema import ErrorResponse, RepositoryIndexRequest, RepositoryLoadRequest, RepositoryModel

router = APIRouter(tags=["repository"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 404, 503)}
CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 503)
}
# A small JSON body at most: these calls carry a flag or a few parameters.
MAX_BODY_BYTES = 64 * 1024


def _optional_body(schema) -> dict:
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": schema}}}}


async def _read(request: Request, model):
    """The optional JSON body (tritonclient sends none, or an empty one)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"request body is over the {MAX_BODY_BYTES}-byte limit of this call")
    if not body.strip():
        return model()
    try:
        return TypeAdapter(model).validate_python(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise BadRequest("invalid request: " + describe_validation_error(exc)) from None


@router.post(
    "/v2/repository/index",
    response_model=list[RepositoryModel],
    responses=ERRORS,
    openapi_extra=_optional_body(RepositoryIndexRequest.model_json_schema()),
)
async def repository_index(request: Request, plane: DataPlane = Depends(get_plane)):
    wanted = await _read(request, RepositoryIndexRequest)
    return JSONBytesResponse(plane.repository_index(wanted.ready))


@router.post(
    "/v2/repository/models/{model_name}/load",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **CONTROL_ERRORS},
    openapi_extra=_optional_body(RepositoryLoadRequest.model_json_schema()),
)
async def load_model(request: Request, model_name: str, plane: DataPlane = Depends(get_plane)):
    """Load the model (from its repository folder) and answer once it is ready
    (MODEL_CONTROL_MODE=explicit only)."""
    plane.authorize_model_control(request.headers.get("authorization"))
    parameters = (await _read(request, RepositoryLoadRequest)).parameters or {}
    await plane.load(model_name, parameters, request.headers.get("authorization"))
    return JSONBytesResponse({})


@router.post(
    "/v2/repository/models/{model_name}/unload",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **CONTROL_ERRORS},
    openapi_extra=_optional_body(RepositoryLoadRequest.model_json_schema()),
)
async def unload_model(request: Request, model_name: str, plane: DataPlane = Depends(get_plane)):
    """Stop taking requests for the model, finish those admitted, free it
    (MODEL_CONTROL_MODE=explicit only)."""
    plane.authorize_model_control(request.headers.get("authorization"))
    await _read(request, RepositoryLoadRequest)
    await plane.unload(model_name, request.headers.get("authorization"))
    return JSONBytesResponse({})
