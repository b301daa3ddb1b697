"""Turn a raw V2 infer body into validated tensors, whatever the Content-Type.

tritonclient sends no Content-Type (sync) or application/octet-stream (aio) even for pure
JSON, so the body is read raw and split by `Inference-Header-Content-Length`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from app.errors import BadRequest, PayloadTooLarge
from app.protocol.binary import decode_tensor, split_body
from app.protocol.schema import DATATYPES, InferRequest, RequestInput

# The input a raw-body request (Inference-Header-Content-Length: 0) carries.
RAW_BODY_INPUT = "image"

# Admission of one input from its name and declared element count, before its data is
# decoded: raises for an input the caller does not take or a count it does not allow.
AdmitInput = Callable[[str, int], None]


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list  # flat, row-major


@dataclass
class ParsedRequest:
    request: InferRequest
    tensors: dict[str, Tensor]


def parse_infer_body(
    body: bytes,
    header_length: str | None,
    admit: AdmitInput | None = None,
    max_json_values: int | None = None,
) -> ParsedRequest:
    """`admit` sees each input's declared size before its data is decoded; `max_json_values`
    bounds the values in the JSON header before it is parsed (a body of small numbers
    takes eight to thirty times its size once parsed)."""
    if header_length is not None and header_length.strip() == "0":
        # Raw binary request: no JSON header, the body is the single image itself.
        if not body:
            raise BadRequest("raw binary request has an empty body")
        request = InferRequest(inputs=[RequestInput(name=RAW_BODY_INPUT, shape=[1], datatype="BYTES")])
        return ParsedRequest(request, {RAW_BODY_INPUT: Tensor(RAW_BODY_INPUT, "BYTES", [1], [body])})

    header, binary = split_body(body, header_length)
    if max_json_values is not None:
        check_value_count(header, max_json_values)
    request = _validate_header(header)
    tensors: dict[str, Tensor] = {}
    offset = 0
    for item in request.inputs:
        expected = declared_elements(item.name, item.datatype, item.shape, tensors)
        if admit is not None:
            admit(item.name, expected)
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if item.data is not None:
                raise BadRequest(f"input '{item.name}' has both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequest(f"input '{item.name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input '{item.name}': binary_data_size {size} runs past the "
                    f"{len(binary) - offset} binary bytes left in the body"
                )
            values = decode_tensor(
                item.datatype, binary[offset : offset + size], f"input '{item.name}'", max_elements=expected
            )
            offset += size
        else:
            if item.data is None:
                raise BadRequest(f"input '{item.name}' has no data")
            values = _flatten(item.data, stop_after=expected + 1)
            _check_json_values(item.name, item.datatype, values)
        check_element_count(item.name, item.shape, expected, values)
        tensors[item.name] = Tensor(item.name, item.datatype, item.shape, values)
    if offset != len(binary):
        raise BadRequest(f"body has {len(binary) - offset} binary bytes beyond those the inputs declare")
    return ParsedRequest(request, tensors)


def _validate_header(header: bytes) -> InferRequest:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    try:
        return InferRequest.model_validate(document)
    except ValidationError as exc:
        raise BadRequest("invalid request: " + describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def declared_elements(name: str, datatype: str, shape: list[int], seen: dict) -> int:
    """The element count an input declares, once its name (not among those `seen`),
    datatype and shape are checked: every transport's first look at an input."""
    if name in seen:
        raise BadRequest(f"input '{name}' appears more than once")
    if datatype not in DATATYPES:
        raise BadRequest(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    if any(dim < 0 for dim in shape):
        raise BadRequest(f"input '{name}': shape {shape} has a negative dimension")
    return math.prod(shape)


def check_element_count(name: str, shape: list[int], expected: int, values: list) -> None:
    if len(values) != expected:
        raise BadRequest(f"input '{name}': shape {shape} needs {expected} elements, got {len(values)}")


def check_value_count(header: bytes, limit: int) -> None:
    """413 for a JSON document with more than `limit` values, before it is parsed."""
    # Every JSON value but the first follows a comma (a comma inside a string only makes
    # the count larger): one C-speed count bounds what parsing the header can allocate.
    commas = header.count(b",")
    if commas > limit:
        raise PayloadTooLarge(
            f"request JSON holds more than {limit} values ({commas} commas); send fewer elements"
        )


def _flatten(data: object, stop_after: int | None = None) -> list:
    """Row-major elements, at most `stop_after` of them (enough to tell a wrong count)."""
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested list must not exhaust the recursion limit
        for element in stack[-1]:
            if isinstance(element, list):
                stack.append(iter(element))
                break
            flat.append(element)
            if stop_after is not None and len(flat) >= stop_after:
                return flat
        else:
            stack.pop()
    return flat


def _check_json_values(name: str, datatype: str, values: list) -> None:
    if datatype == "BYTES":
        ok = lambda v: isinstance(v, str)  # noqa: E731
        kind = "strings"
    elif datatype == "BOOL":
        ok = lambda v: isinstance(v, bool)  # noqa: E731
        kind = "true/false"
    elif datatype.startswith(("INT", "UINT")):
        ok = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        kind = "integers"
    else:
        ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        kind = "numbers"
    for index, value in enumerate(values):
        if not ok(value):
            raise BadRequest(
                f"input '{name}' element {index}: {datatype} data must be {kind}, got {type(value).__name__}"
            )
