"""Model routes: metadata, readiness, infer and statistics, plain and versioned. Each is a
thin adapter: the V2 codec decodes, the registry finds the model, the codec encodes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.api.body import decode_body, read_body
from app.api.dependencies import get_body_budget, get_models
from app.api.examples import INFER_EXAMPLES
from app.api.responses import JSONBytesResponse
from app.inference.budgets import ByteBudget, Reservation
from app.inference.registry import ModelRegistry
from app.protocol.codec import RequestLimits, encode_response
from app.protocol.codec import model_metadata as v2_model_metadata
from app.protocol.schema import ErrorResponse, InferResponse, ModelMetadata, ModelReadyResponse
from app.request_ids import safe_request_id

router = APIRouter(tags=["models"])

MODEL = "/v2/models/{model_name}"
VERSIONED = "/v2/models/{model_name}/versions/{model_version}"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 503)}

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
    }
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
async def all_model_stats(models: ModelRegistry = Depends(get_models)):
    return JSONBytesResponse({"model_stats": [model.stats.as_dict() for model in models]})


@_route("GET", "", response_model=ModelMetadata, response_model_exclude_none=True, responses=ERRORS)
async def model_metadata(model_name: str, model_version: str | None = None,
                         models: ModelRegistry = Depends(get_models)):  # fmt: skip
    return ModelMetadata(**v2_model_metadata(models.get(model_name, model_version).describe()))


@_route("GET", "/ready", response_model=ModelReadyResponse, responses=ERRORS)
async def model_ready(model_name: str, model_version: str | None = None,
                      models: ModelRegistry = Depends(get_models)):  # fmt: skip
    model = models.get(model_name, model_version)
    return JSONBytesResponse({"name": model.name, "ready": model.ready}, status_code=200 if model.ready else 503)


@_route("POST", "/infer", response_model=InferResponse, responses=ERRORS, openapi_extra=INFER_OPENAPI)
async def infer(request: Request, model_name: str, model_version: str | None = None,
                models: ModelRegistry = Depends(get_models),
                body_budget: ByteBudget = Depends(get_body_budget)):  # fmt: skip
    model = models.get(model_name, model_version)
    model.require_ready()
    limits = RequestLimits.from_settings(model.settings)
    reservation = Reservation(body_budget)
    try:
        body = await read_body(request, limits.max_request_bytes, reservation)
        with model.counting_request():
            headers = request.headers
            spec = await decode_body(
                body, headers.get("content-encoding"), headers.get("inference-header-content-length"),
                limits, reservation,
            )  # fmt: skip
            request.state.image_count = len(spec.images)  # for the access log
            # A client's id only when it is safe for headers and logs; the answer says which.
            request.state.request_id = safe_request_id(spec.request_id) or request.state.request_id
            deadline_s = spec.timeout_us / 1e6 if spec.timeout_us else None
            parameters = None
            if spec.texts:
                embeddings, tokenized = await model.embed_texts(
                    spec.texts, spec.pooling, spec.normalize, deadline_s
                )
                parameters = {"texts_truncated": tokenized.truncated}
            else:
                embeddings = await model.embed(spec.images, spec.pooling, spec.normalize, deadline_s)
            answer, header_length = encode_response(
                request.state.request_id, model.name, model.model_id, embeddings, spec.outputs, parameters
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
async def model_stats(model_name: str, model_version: str | None = None,
                      models: ModelRegistry = Depends(get_models)):  # fmt: skip
    return JSONBytesResponse({"model_stats": [models.get(model_name, model_version).stats.as_dict()]})
