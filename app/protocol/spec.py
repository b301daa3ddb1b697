"""What a request asks for, in domain terms: images, pooling, normalisation, outputs."""

from __future__ import annotations

from dataclasses import dataclass

from app.embedding.pooling import PoolingStrategy
from app.errors import BadRequest, PayloadTooLarge
from app.protocol.request import ParsedRequest, Tensor

IMAGE_INPUT = "image"
OUTPUT_JSON = "output"
OUTPUT_RAW = "raw_embeddings"
KNOWN_INPUTS = (IMAGE_INPUT, "pooling_strategy", "normalize", "include_raw")
KNOWN_OUTPUTS = (OUTPUT_JSON, OUTPUT_RAW)

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f", ""}


@dataclass(frozen=True)
class OutputChoice:
    name: str
    binary: bool


@dataclass
class EmbedRequestSpec:
    request_id: str | None
    images: list[str | bytes]
    pooling: PoolingStrategy | None  # None: the server default
    normalize: bool | None  # None: the server default
    outputs: list[OutputChoice]
    timeout_us: int | None


def input_admission(max_images: int):
    """The parser's check of each input from its declared shape, before any element is
    decoded: a 4-million-element flag is refused before it becomes 4 million objects."""

    def admit(name: str, count: int) -> None:
        if name not in KNOWN_INPUTS:
            raise BadRequest(f"unknown input '{name}'; this model takes {', '.join(KNOWN_INPUTS)}")
        if name == IMAGE_INPUT:
            _check_image_count(count, max_images)
        elif count != 1:
            raise BadRequest(f"input '{name}' must have exactly one element, its shape has {count}")

    return admit


def max_json_values(max_images: int) -> int:
    """A bound on the values in a request's JSON header: each image element, a few dozen
    for the request's own structure, and room for commas inside URLs."""
    return 16 * max_images + 1024


def _check_image_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise PayloadTooLarge(f"input 'image' has {count} images, over the limit of {max_images} per request")


def build_spec(parsed: ParsedRequest, max_images: int) -> EmbedRequestSpec:
    tensors = parsed.tensors
    unknown = [name for name in tensors if name not in KNOWN_INPUTS]
    if unknown:
        raise BadRequest(f"unknown input '{unknown[0]}'; this model takes {', '.join(KNOWN_INPUTS)}")
    image = tensors.get(IMAGE_INPUT)
    if image is None:
        raise BadRequest("missing input 'image' (BYTES: URLs, data URIs, base64 or image files)")
    if image.datatype != "BYTES":
        raise BadRequest(f"input 'image' must have datatype BYTES, got {image.datatype}")
    if not image.values:
        raise BadRequest("input 'image' has no elements")
    _check_image_count(len(image.values), max_images)
    pooling_text = _scalar_text(tensors.get("pooling_strategy"))
    pooling = None
    if pooling_text is not None:
        try:
            pooling = PoolingStrategy.parse(pooling_text)
        except ValueError as exc:
            raise BadRequest(f"input 'pooling_strategy': {exc}") from None
    include_raw = _flag(tensors.get("include_raw"))
    request = parsed.request
    parameters = request.parameters or {}
    return EmbedRequestSpec(
        request_id=request.id,
        images=list(image.values),
        pooling=pooling,
        normalize=_flag(tensors.get("normalize")),
        outputs=choose_outputs(parsed, bool(include_raw)),
        timeout_us=_timeout(parameters.get("timeout")),
    )


def choose_outputs(parsed: ParsedRequest, include_raw: bool) -> list[OutputChoice]:
    """Requested outputs with their binary flag: the output's own `binary_data` wins over the
    request's `binary_data_output`; unrequested, the JSON string plus (include_raw) raw bytes."""
    request = parsed.request
    default_binary = _bool_parameter(
        (request.parameters or {}).get("binary_data_output"), "binary_data_output"
    )
    if not request.outputs:
        choices = [OutputChoice(OUTPUT_JSON, bool(default_binary))]
        if include_raw:
            # The original service sends raw embeddings as binary tensor data.
            choices.append(OutputChoice(OUTPUT_RAW, True if default_binary is None else default_binary))
        return choices
    choices = []
    for output in request.outputs:
        if output.name not in KNOWN_OUTPUTS:
            raise BadRequest(f"unknown output '{output.name}'; this model has {', '.join(KNOWN_OUTPUTS)}")
        own = _bool_parameter(
            (output.parameters or {}).get("binary_data"), f"output '{output.name}' binary_data"
        )
        binary = own if own is not None else default_binary
        choices.append(OutputChoice(output.name, bool(binary)))
    return choices


def _scalar(tensor: Tensor | None):
    if tensor is None:
        return None
    if len(tensor.values) != 1:
        raise BadRequest(f"input '{tensor.name}' must have exactly one element, got {len(tensor.values)}")
    return tensor.values[0]


def _scalar_text(tensor: Tensor | None) -> str | None:
    value = _scalar(tensor)
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"input '{tensor.name}' is not UTF-8 text") from None
    if not isinstance(value, str):
        raise BadRequest(f"input '{tensor.name}' must be a BYTES string")
    return value


def _flag(tensor: Tensor | None) -> bool | None:
    """A flag sent as a BYTES string ("true", "1", ...), a BOOL or an integer tensor."""
    value = _scalar(tensor)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = _scalar_text(tensor).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadRequest(f"input '{tensor.name}': {text!r} is not a boolean (use true or false)")


def _bool_parameter(value, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise BadRequest(f"parameter {what} must be true or false")


def _timeout(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadRequest("parameter timeout must be a positive number of microseconds")
    return int(value)
