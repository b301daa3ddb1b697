"""The V2 gRPC codec: a ModelInferRequest in, the same domain request (`EmbedRequestSpec`)
the REST codec makes, with the same checks and messages; embeddings in, a
ModelInferResponse with raw output contents out."""

from __future__ import annotations

import numpy as np
from pydantic import ValidationError

from app.errors import BadRequest
from app.grpc_api.v2 import grpc_service_pb2 as pb
from app.protocol.binary import decode_tensor, encode_bytes_elements
from app.protocol.codec import RequestLimits
from app.protocol.request import (
    ParsedRequest,
    Tensor,
    check_element_count,
    declared_elements,
    describe_validation_error,
)
from app.protocol.response import embedding_document
from app.protocol.schema import InferRequest
from app.protocol.spec import OUTPUT_JSON, EmbedRequestSpec, build_spec, input_admission

# Which typed field of InferTensorContents carries each datatype (FP16 and BF16 have none:
# they travel only as raw_input_contents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS = sorted(set(CONTENTS_FIELD.values()))


def decode_infer_request(message: pb.ModelInferRequest, limits: RequestLimits) -> EmbedRequestSpec:
    """Raises BadRequest (400 / INVALID_ARGUMENT) or PayloadTooLarge (413 / RESOURCE_EXHAUSTED)
    with the REST codec's messages; each input's size is admitted before its data is read."""
    sizes = limits.sizes
    admit = input_admission(sizes)
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
            "send one per input, in the inputs' order"
        )
    tensors: dict[str, Tensor] = {}
    for index, item in enumerate(message.inputs):
        shape = list(item.shape)
        expected = declared_elements(item.name, item.datatype, shape, tensors)
        admit(item.name, expected)
        if raw:
            if item.HasField("contents"):
                raise BadRequest(f"input '{item.name}' has both contents and raw_input_contents")
            values = decode_tensor(item.datatype, raw[index], f"input '{item.name}'", max_elements=expected)
        else:
            values = _typed_contents(item)
        check_element_count(item.name, shape, expected, values)
        tensors[item.name] = Tensor(item.name, item.datatype, shape, values)
    try:
        request = InferRequest.model_validate(
            {
                "id": message.id or None,
                "parameters": _parameters(message.parameters) or None,
                "inputs": [
                    {"name": t.name, "shape": t.shape, "datatype": t.datatype} for t in tensors.values()
                ],
                "outputs": [
                    {"name": o.name, "parameters": _parameters(o.parameters) or None} for o in message.outputs
                ]
                or None,
            }
        )
    except ValidationError as exc:
        raise BadRequest("invalid request: " + describe_validation_error(exc)) from None
    return build_spec(ParsedRequest(request, tensors), sizes)


def _typed_contents(item) -> list:
    field = CONTENTS_FIELD.get(item.datatype)
    contents = item.contents
    stray = [name for name in _ALL_CONTENTS if name != field and len(getattr(contents, name))]
    if stray:
        where = f"{field}" if field else "raw_input_contents only"
        raise BadRequest(f"input '{item.name}': datatype {item.datatype} takes {where}, not {stray[0]}")
    if field is None:
        raise BadRequest(f"input '{item.name}': datatype {item.datatype} travels as raw_input_contents only")
    return list(getattr(contents, field))


def _parameters(parameters) -> dict:
    """InferParameter map -> plain values (None for an unset oneof)."""
    values = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, which) if which else None
    return values


def encode_infer_response(
    request_id: str,
    model_name: str,
    model_version: str,
    model_id: str,
    embeddings: np.ndarray,
    outputs,
    parameters: dict | None = None,
) -> pb.ModelInferResponse:
    """The requested outputs (the `output` JSON document, `raw_embeddings`), always as
    raw_output_contents: BYTES as length-prefixed elements, FP32 little-endian."""
    embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for key, value in (parameters or {}).items():
        response.parameters[key].int64_param = int(value)
    for choice in outputs:
        if choice.name == OUTPUT_JSON:
            response.outputs.add(name=OUTPUT_JSON, datatype="BYTES", shape=[1])
            response.raw_output_contents.append(
                encode_bytes_elements([embedding_document(embeddings, model_id)])
            )
        else:
            response.outputs.add(name=choice.name, datatype="FP32", shape=list(embeddings.shape))
            response.raw_output_contents.append(embeddings.tobytes())
    return response
