"""Shape the V2 answer: the original service's `output` JSON string, and `raw_embeddings`
as FP32 tensor data, each in JSON or as binary tensor data."""

from __future__ import annotations

import numpy as np
import orjson

from app.protocol.binary import encode_bytes_elements
from app.protocol.spec import OUTPUT_JSON, OutputChoice


def embedding_document(embeddings: np.ndarray, model_id: str) -> bytes:
    """The original service's string: same keys, order and spacing, with the embeddings
    written by orjson (json.dumps of a 64x1024 list takes 20x longer)."""
    rows, dim = embeddings.shape
    return b"".join(
        (
            b'{"embedding_dim": %d, "embeddings": ' % dim,
            orjson.dumps(embeddings, option=orjson.OPT_SERIALIZE_NUMPY),
            b', "model_id": ',
            orjson.dumps(model_id),
            b', "shape": [%d, %d]}' % (rows, dim),
        )
    )


def encode_response(
    request_id: str,
    model_name: str,
    model_id: str,
    embeddings: np.ndarray,
    outputs: list[OutputChoice],
    parameters: dict | None = None,
) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary tensor data follows it;
    `parameters` (e.g. how many texts were truncated) go in the answer's own parameters."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    entries: list[dict[str, object]] = []
    chunks: list[bytes] = []
    for choice in outputs:
        entry: dict[str, object]
        if choice.name == OUTPUT_JSON:
            document = embedding_document(embeddings, model_id)
            entry = {"name": OUTPUT_JSON, "shape": [1], "datatype": "BYTES"}
            if choice.binary:
                chunks.append(encode_bytes_elements([document]))
            else:
                entry["data"] = [document.decode()]
        else:
            entry = {"name": choice.name, "shape": list(embeddings.shape), "datatype": "FP32"}
            if choice.binary:
                chunks.append(embeddings.astype("<f4", copy=False).tobytes())
            else:
                entry["data"] = embeddings.ravel()
        if choice.binary:
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        entries.append(entry)
    answer: dict[str, object] = {"id": request_id, "model_name": model_name}
    if parameters:
        answer["parameters"] = parameters
    answer["outputs"] = entries
    header = orjson.dumps(
        answer,
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
