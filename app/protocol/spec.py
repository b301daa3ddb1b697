"""What a request asks for, in domain terms: images, pooling, normalisation, outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.embedding.pooling import PoolingStrategy
from app.errors import BadRequest, PayloadTooLarge
from app.protocol.request import ParsedRequest, Tensor

IMAGE_INPUT = "image"
TEXT_INPUT = "text"
OUTPUT_JSON = "output"
OUTPUT_RAW = "raw_embeddings"
FLAG_INPUTS = ("pooling_strategy", "normalize", "include_raw")
KNOWN_INPUTS = (IMAGE_INPUT, TEXT_INPUT, *FLAG_INPUTS)
KNOWN_OUTPUTS = (OUTPUT_JSON, OUTPUT_RAW)

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f", ""}


@dataclass(frozen=True)
class OutputChoice:
    name: str
    binary: bool


@dataclass(frozen=True)
class SizeLimits:
    """The limits on a request's inputs that the codec enforces."""

    max_images: int
    max_texts: int
    max_text_chars: int


@dataclass
class EmbedRequestSpec:
    request_id: str | None
    images: list[str | bytes]  # empty for a text request
    texts: list[str]  # empty for an image request
    pooling: PoolingStrategy | None  # None: the server default
    normalize: bool | None  # None: the server default
    outputs: list[OutputChoice]
    timeout_us: int | None
    cache: bool = True  # parameters.cache=false: neither read nor write the embedding cache


def input_admission(limits: SizeLimits):
    """The parser's check of each input from its declared shape, before any element is
    decoded: a 4-million-element flag is refused before it becomes 4 million objects."""

    def admit(name: str, count: int) -> None:
        if name not in KNOWN_INPUTS:
            raise BadRequest(f"unknown input '{name}'; this model takes {', '.join(KNOWN_INPUTS)}")
        if name == IMAGE_INPUT:
            _check_count(name, count, limits.max_images, "images")
        elif name == TEXT_INPUT:
            _check_count(name, count, limits.max_texts, "texts")
        elif count != 1:
            raise BadRequest(f"input '{name}' must have exactly one element, its shape has {count}")

    return admit


def max_json_values(limits: SizeLimits) -> int:
    """A bound on the values in a request's JSON header: each image element, a few dozen
    for the request's own structure, and room for commas inside URLs and texts."""
    return 16 * limits.max_images + limits.max_texts * (limits.max_text_chars + 1) + 1024


_COUNT_SETTINGS = {"images": "MAX_IMAGES_PER_REQUEST", "texts": "MAX_TEXTS_PER_REQUEST"}


def _check_count(name: str, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise PayloadTooLarge(
            f"input '{name}' has {count} {what}, over the limit of {limit} per request "
            f"({_COUNT_SETTINGS[what]}); "
            "split it into several requests"
        )


def build_spec(parsed: ParsedRequest, limits: SizeLimits) -> EmbedRequestSpec:
    tensors = parsed.tensors
    unknown = [name for name in tensors if name not in KNOWN_INPUTS]
    if unknown:
        raise BadRequest(f"unknown input '{unknown[0]}'; this model takes {', '.join(KNOWN_INPUTS)}")
    image, text = tensors.get(IMAGE_INPUT), tensors.get(TEXT_INPUT)
    if image is not None and text is not None:
        raise BadRequest("a request carries input 'image' or input 'text', not both: send them separately")
    if image is None and text is None:
        raise BadRequest(
            "missing input 'image' (BYTES: URLs, data URIs, base64 or image files) or 'text' "
            "(BYTES: UTF-8 strings, for a model with a text tower)"
        )
    images = _elements(image, limits.max_images, "images") if image is not None else []
    texts = _texts(text, limits) if text is not None else []
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
        images=images,
        texts=texts,
        pooling=pooling,
        normalize=_flag(tensors.get("normalize")),
        outputs=choose_outputs(parsed, bool(include_raw)),
        timeout_us=_timeout(parameters.get("timeout")),
        cache=_bool_parameter(parameters.get("cache"), "cache") is not False,
    )


def _elements(tensor: Tensor, limit: int, what: str) -> list:
    if tensor.datatype != "BYTES":
        raise BadRequest(f"input '{tensor.name}' must have datatype BYTES, got {tensor.datatype}")
    if not tensor.values:
        raise BadRequest(f"input '{tensor.name}' has no elements")
    _check_count(tensor.name, len(tensor.values), limit, what)
    return list(tensor.values)


def _texts(tensor: Tensor, limits: SizeLimits) -> list[str]:
    texts = []
    for index, value in enumerate(_elements(tensor, limits.max_texts, "texts")):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"input 'text' element {index} is not UTF-8 text") from None
        if not isinstance(value, str):
            raise BadRequest(f"input 'text' element {index} must be a string")
        check_text_length(value, limits.max_text_chars, f"input 'text' element {index}")
        texts.append(value)
    return texts


def check_text_length(text: str, max_chars: int, where: str) -> None:
    """400 naming the element (`where`) when a text is over MAX_TEXT_CHARS."""
    if len(text) > max_chars:
        raise BadRequest(
            f"{where} has {len(text)} characters, over the limit of {max_chars} (MAX_TEXT_CHARS)"
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
    if tensor is None or value is None:
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
    if tensor is None or value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = (_scalar_text(tensor) or "").strip().lower()
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
    # gRPC's double_param can carry inf and nan, which JSON cannot.
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BadRequest("parameter timeout must be a positive number of microseconds")
    return int(value)
