"""OpenAI-compatible embeddings: `POST /v1/embeddings`, and KServe's `/openai/v1/embeddings`,
for client libraries that speak the OpenAI API (vector databases, LangChain, LlamaIndex).
A thin adapter over the same data plane as the V2 routes: same limits, URL
policy, batching and deadlines. Errors on these routes only are in OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`); embeddings are L2-normalised, as
OpenAI's are."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.body import PARSE_ON_LOOP_BYTES, read_body
from app.api.dependencies import get_plane
from app.api.responses import JSONBytesResponse
from app.dataplane import DataPlane
from app.errors import ServiceError, release_frames
from app.inference.budgets import Reservation
from app.protocol.codec import RequestLimits
from app.protocol.encoding import decode_content, is_encoded
from app.protocol.request import check_value_count
from app.protocol.spec import max_json_values

router = APIRouter(tags=["openai"])

_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error"}
_ERROR_CODES = {404: "model_not_found", 413: "request_too_large", 503: "service_unavailable", 504: "timeout"}


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="the served model's name (as in /v2/models/{name})")
    input: str | list[str] = Field(
        description="a string or a list of strings: texts, or images (URLs, data URIs, base64) "
        "with modality=image"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64-encoded"
    )
    modality: Literal["text", "image"] | None = Field(
        None, description="text or image; default: text for a model with a text tower, else image"
    )
    dimensions: int | None = Field(
        None, description="accepted only when equal to the model's embedding size (no model here shortens)"
    )
    cache: bool = Field(
        True, description="false: this request neither reads nor writes the embedding cache (not OpenAI's)"
    )
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64 with encoding_format=base64


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail


class OpenAIError(Exception):
    def __init__(self, status_code: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status_code, self.message, self.param, self.headers = status_code, message, param, headers


def error_response(error: OpenAIError) -> JSONBytesResponse:
    body = {
        "error": {
            "message": error.message,
            "type": _ERROR_TYPES.get(error.status_code, "server_error"),
            "param": error.param,
            "code": _ERROR_CODES.get(error.status_code),
        }
    }
    return JSONBytesResponse(body, status_code=error.status_code, headers=error.headers)


_ROUTE: dict[str, Any] = dict(
    responses={
        200: {"model": EmbeddingsResponse},
        **{code: {"model": OpenAIErrorResponse} for code in (400, 404, 413, 503, 504)},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingsRequest.model_json_schema()}},
        }
    },
)


@router.post("/v1/embeddings", **_ROUTE)
@router.post("/openai/v1/embeddings", **_ROUTE)  # KServe's path for the same call
async def embeddings(request: Request, plane: DataPlane = Depends(get_plane)):
    """Embed texts (a model with a text tower) or images, answered in OpenAI's shape."""
    try:
        return await _embeddings(request, plane)
    except OpenAIError as exc:
        release_frames(exc)
        return error_response(exc)
    except ServiceError as exc:
        release_frames(exc)
        return error_response(
            OpenAIError(
                exc.status_code,
                exc.message,
                param=getattr(exc, "field", None),
                headers=getattr(exc, "headers", None),
            )
        )


async def _embeddings(request: Request, plane: DataPlane) -> JSONBytesResponse:
    reservation = Reservation(plane.body_budget)
    try:
        body = await read_body(request, plane.limits.max_request_bytes, reservation)
        parsed = await _parse(body, request.headers.get("content-encoding"), plane.limits)
        inputs = [parsed.input] if isinstance(parsed.input, str) else parsed.input
        outcome = await plane.embed(
            parsed.model, inputs, parsed.modality, parsed.dimensions, cache=parsed.cache
        )
    finally:
        reservation.release()
    tokens = outcome.input_tokens
    return JSONBytesResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(row, parsed.encoding_format)}
                for i, row in enumerate(outcome.embeddings)
            ],
            "model": outcome.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _parse(body: bytes, encoding: str | None, limits: RequestLimits) -> EmbeddingsRequest:
    def parse() -> EmbeddingsRequest:
        raw = decode_content(body, encoding, limits.max_request_bytes, limits.max_inflation_ratio)
        # Counted before parsing, as the V2 route does: a list of millions of short strings
        # would otherwise cost a gigabyte of Python objects before its 413.
        check_value_count(raw, max_json_values(limits.sizes))
        try:
            return EmbeddingsRequest.model_validate_json(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = error.get("loc", ())
            if loc and loc[0] == "input":  # OpenAI also takes token arrays; this server does not
                raise OpenAIError(
                    400,
                    "invalid request: input must be a string or a list of strings (token arrays "
                    "are not supported)",
                    "input",
                ) from None
            where = ".".join(str(p) for p in loc) or None
            raise OpenAIError(400, f"invalid request: {where or 'body'}: {error['msg']}", where) from None

    if len(body) <= PARSE_ON_LOOP_BYTES and not is_encoded(encoding):
        return parse()
    return await asyncio.to_thread(parse)


def _encode(row: np.ndarray, encoding_format: str):
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
    return row  # a float32 array: the response's orjson writes it as a list
