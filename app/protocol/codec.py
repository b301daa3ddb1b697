"""The V2 codec: a request body (bytes and the two headers that frame it) in, the domain
request (`EmbedRequestSpec`) out; embeddings in, a V2 answer out; a model's description
in, V2 model metadata out. Transport-free: the REST route hands it HTTP bytes, a gRPC
servicer would hand it the message's fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.protocol.encoding import decode_content
from app.protocol.request import parse_infer_body
from app.protocol.response import encode_response
from app.protocol.spec import (
    FLAG_INPUTS,
    IMAGE_INPUT,
    OUTPUT_JSON,
    OUTPUT_RAW,
    TEXT_INPUT,
    EmbedRequestSpec,
    SizeLimits,
    build_spec,
    input_admission,
    max_json_values,
)

if TYPE_CHECKING:
    from app.inference.served_model import ModelDescription
    from app.settings.server import ServerSettings

__all__ = ["RequestLimits", "decode_request", "encode_response", "model_metadata"]


@dataclass(frozen=True)
class RequestLimits:
    """What a transport may read: the body's size (after decompression) and inflation, and
    the inputs it may hold (`sizes`, which the codec enforces while parsing)."""

    max_request_bytes: int
    max_inflation_ratio: float
    sizes: SizeLimits

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> RequestLimits:
        sizes = SizeLimits(
            settings.max_images_per_request, settings.max_texts_per_request, settings.max_text_chars
        )
        return cls(settings.max_request_bytes, settings.max_inflation_ratio, sizes)


def decode_request(
    body: bytes, content_encoding: str | None, header_length: str | None, limits: RequestLimits
) -> tuple[EmbedRequestSpec, int]:
    """The request, and the size of its body once inflated. Every shape is checked before
    element data is decoded; raises BadRequest (400) or PayloadTooLarge (413)."""
    raw = decode_content(body, content_encoding, limits.max_request_bytes, limits.max_inflation_ratio)
    parsed = parse_infer_body(
        raw, header_length, input_admission(limits.sizes), max_json_values(limits.sizes)
    )
    return build_spec(parsed, limits.sizes), len(raw)


def model_metadata(description: ModelDescription) -> dict:
    """V2 model metadata: the inputs this codec reads, the outputs it writes, and the
    model's own facts as parameters."""
    flag = {"datatype": "BYTES", "shape": [1]}
    has_text = TEXT_INPUT in description.modalities
    return {
        "name": description.name,
        "versions": list(description.versions),
        "platform": description.runtime["platform"],
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            *([{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}] if has_text else []),
            *({"name": name, **flag} for name in FLAG_INPUTS),
        ],
        "outputs": [
            {"name": OUTPUT_JSON, "datatype": "BYTES", "shape": [1]},
            {"name": OUTPUT_RAW, "datatype": "FP32", "shape": [-1, description.embedding_dim]},
        ],
        "parameters": {
            "model_id": description.model_id,
            "model_type": description.model_type,
            "family": description.runtime["family"],
            "embedding_dim": description.embedding_dim,
            "pooling_strategies": [p.value for p in description.poolings],
            "default_pooling_strategy": description.default_pooling.value,
            "normalize_embeddings": description.normalize_default,
            "device": description.runtime["device"],
            "dtype": description.runtime["dtype"],
            "max_images_per_request": description.max_images,
            "modalities": list(description.modalities),
            **({"max_texts_per_request": description.max_texts} if has_text else {}),
            **description.text_logits,
        },
    }
