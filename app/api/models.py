"""Model routes: metadata, readiness, infer and statistics, plain and versioned. Each is a
thin adapter: the V2 codec decodes, the data plane runs it, the codec encodes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.api.body import decode_body, read_body
from app.api.dependencies import get_plane
from app.api.examples import INFER_EXAMPLES
from app.api.responses import JSONBytesResponse
from app.dataplane import DataPlane
from app.inference.budgets import Reservation
from app.protocol.codec import RequestLimits, encode_response
from app.protocol.schema import ErrorResponse, InferResponse, ModelMetadata, ModelReadyResponse
from app.protocol.spec import EmbedRequestSpec
from app.request_ids import safe_request_id

router = APIRouter(tags=["models"])

MODEL = "/v2/models/{model_name}"
VERSIONED = "/v2/models/{model_name}/versions/{model_version}"
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 404, 413, 503)}

INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "A V2 inference request as JSON, or a JSON header followed by binary "
        "tensor data (Inference-Header-Content-Length), optionally gzip- or deflate-encoded.",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/InferRequest"},
                "examples": INFER_EXAMPLES,
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    # With raw_embeddings as binary data (include_raw, or binary_data outputs) the answer is
    # a JSON header followed by the tensor bytes (Inference-Header-Content-Length).
    "responses": {
        "200": {
            "description": "A V2 inference response",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
}


def _route(method: str, suffix: str, **kwargs):
    """Register a handler under the plain and the versioned model path."""

    def register(handler):
        for prefix in (MODEL, VERSIONED):
            router.add_api_route(prefix + suffix, handler, methods=[method], **kwargs)
        return handler

    return register


# Before /v2/models/{model_name}, which would otherwise take "stats" for a model name.
@router.get("/v2/models/stats", responses=ERRORS)
async def all_model_stats(plane: DataPlane = Depends(get_plane)):
    return JSONBytesResponse({"model_stats": plane.statistics()})


@_route("GET", "", response_model=ModelMetadata, response_model_exclude_none=True, responses=ERRORS)
async def model_metadata(
    model_name: str, model_version: str | None = None, plane: DataPlane = Depends(get_plane)
):
    return ModelMetadata(**plane.model_metadata(model_name, model_version))


@_route("GET", "/ready", response_model=ModelReadyResponse, responses=ERRORS)
async def model_ready(
    model_name: str, model_version: str | None = None, plane: DataPlane = Depends(get_plane)
):
    ready = plane.model_ready(model_name, model_version)
    return JSONBytesResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 503)


@_route("POST", "/infer", response_model=InferResponse, responses=ERRORS, openapi_extra=INFER_OPENAPI)
async def infer(
    request: Request, model_name: str, model_version: str | None = None, plane: DataPlane = Depends(get_plane)
):
    reservation = Reservation(plane.body_budget)

    async def decode(limits: RequestLimits) -> EmbedRequestSpec:
        body = await read_body(request, limits.max_request_bytes, reservation)
        headers = request.headers
        spec = await decode_body(
            body,
            headers.get("content-encoding"),
            headers.get("inference-header-content-length"),
            limits,
            reservation,
        )
        request.state.image_count = len(spec.images)  # for the access log
        # A client's id only when it is safe for headers and logs; the answer says which.
        request.state.request_id = safe_request_id(spec.request_id) or request.state.request_id
        return spec

    try:
        outcome = await plane.infer(model_name, model_version, decode)
        answer, header_length = encode_response(
            request.state.request_id,
            outcome.model_name,
            outcome.model_id,
            outcome.embeddings,
            outcome.spec.outputs,
            outcome.parameters,
        )
    finally:
        reservation.release()
    if header_length is None:
        return Response(answer, media_type="application/json")
    return Response(
        answer,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


@_route("GET", "/stats", responses=ERRORS)
async def model_stats(
    model_name: str, model_version: str | None = None, plane: DataPlane = Depends(get_plane)
):
    return JSONBytesResponse({"model_stats": plane.statistics(model_name, model_version)})
