"""Model routes: metadata, readiness, infer and statistics, plain and versioned."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from app.api.dependencies import get_service
from app.api.examples import INFER_EXAMPLES
from app.api.responses import JSONBytesResponse
from app.errors import BadRequest, PayloadTooLarge
from app.inference.budgets import Reservation
from app.inference.service import MODEL_VERSION, InferenceService, RequestContext
from app.inference.spec import KNOWN_INPUTS
from app.protocol.schema import ErrorResponse, InferResponse, ModelMetadata, ModelReadyResponse

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
async def all_model_stats(service: InferenceService = Depends(get_service)):
    return JSONBytesResponse({"model_stats": [service.stats.as_dict()]})


@_route("GET", "", response_model=ModelMetadata, response_model_exclude_none=True, responses=ERRORS)
async def model_metadata(model_name: str, model_version: str | None = None,
                         service: InferenceService = Depends(get_service)):  # fmt: skip
    service.check_model(model_name, model_version)
    embedder = service.require_loaded()
    dim = embedder.embedding_dim
    flag = {"datatype": "BYTES", "shape": [1]}
    return ModelMetadata(
        name=service.model_name,
        versions=[MODEL_VERSION],
        platform="pytorch_transformers",
        inputs=[
            {"name": KNOWN_INPUTS[0], "datatype": "BYTES", "shape": [-1]},
            *({"name": name, **flag} for name in KNOWN_INPUTS[1:]),
        ],
        outputs=[
            {"name": "output", "datatype": "BYTES", "shape": [1]},
            {"name": "raw_embeddings", "datatype": "FP32", "shape": [-1, dim]},
        ],
        parameters={
            "model_id": embedder.model_id,
            "model_type": embedder.model_type,
            "family": embedder.adapter.name,
            "embedding_dim": dim,
            "pooling_strategies": [p.value for p in embedder.supported_poolings],
            "default_pooling_strategy": service.default_pooling.value,
            "normalize_embeddings": service.settings.normalize_embeddings,
            "device": str(embedder.device),
            "dtype": str(embedder.dtype).removeprefix("torch."),
            "max_images_per_request": service.settings.max_images_per_request,
        },
    )


@_route("GET", "/ready", response_model=ModelReadyResponse, responses=ERRORS)
async def model_ready(model_name: str, model_version: str | None = None,
                      service: InferenceService = Depends(get_service)):  # fmt: skip
    service.check_model(model_name, model_version)
    return JSONBytesResponse(
        {"name": service.model_name, "ready": service.ready}, status_code=200 if service.ready else 503
    )


@_route("POST", "/infer", response_model=InferResponse, responses=ERRORS, openapi_extra=INFER_OPENAPI)
async def infer(request: Request, model_name: str, model_version: str | None = None,
                service: InferenceService = Depends(get_service)):  # fmt: skip
    service.check_model(model_name, model_version)
    service.require_ready()
    context = RequestContext(request.state.request_id, body=Reservation(service.body_bytes))
    try:
        body = await read_body(request, service.settings.max_request_bytes, context.body)
        answer = await service.infer(
            body,
            request.headers.get("content-encoding"),
            request.headers.get("inference-header-content-length"),
            context,
        )
    finally:  # for the access log and the X-Request-ID header, errors included
        context.body.release()
        request.state.request_id = context.request_id
        request.state.image_count = context.image_count
    if answer.header_length is None:
        return Response(answer.body, media_type="application/json")
    return Response(
        answer.body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(answer.header_length)},
    )


@_route("GET", "/stats", responses=ERRORS)
async def model_stats(model_name: str, model_version: str | None = None,
                      service: InferenceService = Depends(get_service)):  # fmt: skip
    service.check_model(model_name, model_version)
    return JSONBytesResponse({"model_stats": [service.stats.as_dict()]})


async def read_body(request: Request, max_bytes: int, reservation: Reservation) -> bytes:
    """The raw body, refused with 413 as soon as it is known to pass max_bytes, and with
    503 when the server already holds its limit of body bytes (before reading a byte of a
    body that declares its length)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the {max_bytes}-byte limit")
        reservation.grow(int(declared))
    chunks = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"request body is over the {max_bytes}-byte limit")
            if received > reservation.held:  # chunked, or more than declared
                reservation.grow(received - reservation.held)
            chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer; a 400 in the access log, not a traceback
        raise BadRequest(f"client disconnected after {received} bytes of the body") from None
    return b"".join(chunks)
