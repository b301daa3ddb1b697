"""Service settings: read once at start-up from the environment and `python -m app` flags."""

from __future__ import annotations

import enum
import ipaddress
import re
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.embedding.pooling import PoolingStrategy


class DTypeSetting(enum.StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class RuntimeSetting(enum.StrEnum):
    TORCH = "torch"
    OPENVINO = "openvino"


class QuantizeSetting(enum.StrEnum):
    NONE = "none"
    INT8 = "int8"


class ModelControlMode(enum.StrEnum):
    """Triton's names: none refuses repository load/unload; explicit allows them."""

    NONE = "none"
    EXPLICIT = "explicit"


class OpenVinoHint(enum.StrEnum):
    THROUGHPUT = "throughput"
    LATENCY = "latency"


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "image-embed"


class Settings(BaseSettings):
    """Every field is an environment variable (upper case) and a `--kebab-case` flag."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
        protected_namespaces=(),
        validate_default=True,
    )

    model_id: str | None = Field(
        None, description="HuggingFace model id or local folder; unset serves the embedded MobileNetV2"
    )
    model_name: str | None = Field(
        None, description="name in the /v2/models/ routes; default: last part of MODEL_ID"
    )
    model_dir: Path = Field(
        Path("/mnt/models"), description="folder checked first for a model (KServe storageUri mount)"
    )
    model_cache_dir: Path = Field(
        DEFAULT_CACHE_DIR, description="where the embedded default model is converted once"
    )
    pooling_strategy: PoolingStrategy | None = Field(
        None, description="default pooling (cls, mean, max); default: the model family's natural one"
    )
    normalize_embeddings: bool = Field(False, description="L2-normalise embeddings by default")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    dtype: DTypeSetting = Field(
        DTypeSetting.AUTO, description="auto (float16 on CUDA, else float32), float32, float16, bfloat16"
    )
    runtime: RuntimeSetting = Field(
        RuntimeSetting.TORCH,
        description="torch, or openvino (CPU: the model converted at start-up, cached in MODEL_CACHE_DIR)",
    )
    quantize: QuantizeSetting = Field(
        QuantizeSetting.NONE,
        description="none, or int8 (RUNTIME=openvino: NNCF post-training quantization from CALIBRATION_DIR)",
    )
    calibration_dir: Path | None = Field(
        None, description="folder of representative images for QUANTIZE=int8 (a quarter held out to check it)"
    )
    quantize_max_cosine_drop: float = Field(
        0.005,
        gt=0,
        lt=1,
        description="int8: layers go back to float until the held-out images' min cosine to float32 "
        "is within this of 1",
    )
    quantize_min_neighbours_kept: float = Field(
        1.0,
        ge=0,
        le=1,
        description="int8: the share of held-out images that must keep their nearest neighbour "
        "(1: every one); below it the server refuses to serve int8",
    )
    openvino_hint: OpenVinoHint = Field(
        OpenVinoHint.THROUGHPUT,
        description="throughput (several batches in flight on their own streams) or latency (one "
        "batch on every core)",
    )
    model_repository: Path | None = Field(
        None,
        description="folder whose sub-folders are models (name = folder name, optional serving.json); "
        "instead of MODEL_ID",
    )
    max_loaded_models: int = Field(
        0,
        ge=0,
        le=1024,
        description="MODEL_REPOSITORY: most models loaded at once (0: no limit); "
        "loading one more unloads the least recently used idle one",
    )
    model_ttl_s: float = Field(
        0,
        ge=0,
        le=30 * 86400,
        description="unload a model idle this long; its next request reloads it (0: never)",
    )
    model_control_mode: ModelControlMode = Field(
        ModelControlMode.NONE,
        description="none: the repository API's load and unload are refused (403; the index stays "
        "readable); explicit: allowed (Triton's --model-control-mode=explicit)",
    )
    model_control_token: str | None = Field(
        None,
        description="MODEL_CONTROL_MODE=explicit: load and unload need `Authorization: Bearer <token>` "
        "(gRPC: the same metadata)",
    )
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8080, ge=1, le=65535, description="port to listen on (HTTP)")
    grpc_port: int = Field(
        8081, ge=0, le=65535, description="V2 gRPC port (inference.GRPCInferenceService); 0: no gRPC"
    )
    grpc_max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description="largest gRPC message received (inflated) or sent, in bytes (larger: RESOURCE_EXHAUSTED)",
    )
    grpc_max_concurrent_calls: int = Field(
        256, ge=1, le=100_000, description="gRPC calls served at once; past it: RESOURCE_EXHAUSTED"
    )
    grpc_receive_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="longest a gRPC call may take to send its request message"
    )
    grpc_idle_timeout_s: float = Field(
        300.0, gt=0, le=86400, description="a gRPC connection with no call for this long is closed"
    )
    max_images_per_request: int = Field(64, ge=1, le=4096, description="images allowed in one request")
    max_texts_per_request: int = Field(
        64, ge=1, le=4096, description="texts allowed in one request (models with a text tower)"
    )
    max_text_chars: int = Field(
        2048, ge=1, le=1_000_000, description="longest text accepted, in characters (longer: 400)"
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="most images in one forward pass")
    max_batch_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="longest wait for more images before a forward pass"
    )
    compile: bool = Field(
        False, description="torch.compile the model at start-up, once per batch-size bucket"
    )
    channels_last: bool | None = Field(
        None, description="channels_last memory layout; default: on for convolutional models"
    )
    fast_preprocessing: bool = Field(
        True, description="uint8 torch resize/crop/normalise instead of the transformers processor"
    )
    torch_threads: int = Field(
        0, ge=0, le=1024, description="intra-op threads (torch, or OpenVINO's); 0: usable cores / WORKERS"
    )
    workers: int = Field(1, ge=1, le=64, description="server processes, each with its own copy of the model")
    fetch_timeout_s: float = Field(10.0, gt=0, le=600, description="timeout for fetching one image URL")
    fetch_total_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="timeout for fetching all the images of one request"
    )
    max_concurrent_fetches: int = Field(32, ge=1, le=4096, description="image downloads in flight at once")
    allow_urls: bool = Field(True, description="fetch image URLs at all (false: inline images only)")
    allow_private_urls: bool = Field(
        False, description="allow URLs to loopback, private and link-local addresses (in-cluster stores)"
    )
    url_allowlist: str = Field(
        "",
        description="comma-separated hosts (exact URL host) and CIDR networks (any host resolving "
        "into them); when set, the only URLs fetched",
    )

    @field_validator("url_allowlist")
    @classmethod
    def _check_allowlist(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if "/" in entry:
                ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value

    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="largest encoded image accepted, in bytes"
    )
    max_image_pixels: int = Field(
        40_000_000, ge=64, description="largest decoded image accepted, in pixels (width x height)"
    )
    max_decoding_pixels: int = Field(
        64_000_000,
        ge=64,
        description="decoded pixels held at once by images being decoded, across requests; past "
        "it, decoding waits (an image larger than this decodes alone)",
    )
    max_queue_images: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="images admitted and not yet answered; past it: 503 + Retry-After",
    )
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="default deadline of a request (parameters.timeout overrides it)"
    )
    shutdown_drain_s: float = Field(
        5.0, ge=0, le=300, description="on SIGTERM, seconds answering 503 before closing the listener"
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest request body accepted (after decompression), in bytes"
    )
    max_request_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="request body bytes (compressed and inflated) held at once across requests; "
        "past it: 503 + Retry-After",
    )
    max_inflation_ratio: float = Field(
        100.0,
        ge=1,
        description="most a gzip/deflate body over 1 MiB inflated may be, as a multiple of its "
        "compressed size",
    )

    @field_validator("max_request_bytes_in_flight")
    @classmethod
    def _fits_one_request(cls, value: int, info: ValidationInfo) -> int:
        largest = info.data.get("max_request_bytes")
        if largest is not None and value < largest:
            raise ValueError(
                f"must be at least MAX_REQUEST_BYTES ({largest}), or no large request is ever served"
            )
        return value

    log_level: str = Field("info", description="debug, info, warning, error")
    log_format: str = Field(
        "text", pattern="^(text|json)$", description="text, or json (one object per line)"
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_PATTERN.match(value):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be debug, info, warning, error or critical")
        return value

    @field_validator("model_id", "model_name", "model_control_token")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _check_repository(self) -> Settings:
        if self.model_repository is not None:
            if self.model_id is not None:
                raise ValueError(
                    "set MODEL_ID (one model) or MODEL_REPOSITORY (a folder of models), not both"
                )
            if not self.model_repository.is_dir():
                raise ValueError(f"MODEL_REPOSITORY {self.model_repository} is not a folder")
        if self.model_control_token is not None and self.model_control_mode != ModelControlMode.EXPLICIT:
            raise ValueError(
                "MODEL_CONTROL_TOKEN is set but MODEL_CONTROL_MODE is none: set MODEL_CONTROL_MODE=explicit "
                "to allow repository load and unload, or unset the token"
            )
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"GRPC_PORT and PORT are both {self.port}: give gRPC its own port or 0")
        return self

    @model_validator(mode="after")
    def _check_runtime(self) -> Settings:
        if self.quantize == QuantizeSetting.INT8:
            if self.runtime != RuntimeSetting.OPENVINO:
                raise ValueError("QUANTIZE=int8 needs RUNTIME=openvino")
            if self.calibration_dir is None:
                raise ValueError(
                    "QUANTIZE=int8 needs CALIBRATION_DIR: a folder of images like the ones you will "
                    "embed (a few hundred; at least 8, a quarter of them held out to check the result)"
                )
            if not self.calibration_dir.is_dir():
                raise ValueError(f"CALIBRATION_DIR {self.calibration_dir} is not a folder")
        if self.runtime == RuntimeSetting.OPENVINO:
            if self.device not in ("auto", "cpu"):
                raise ValueError(
                    f"RUNTIME=openvino runs on the CPU; DEVICE={self.device} needs RUNTIME=torch"
                )
            if self.dtype == DTypeSetting.FLOAT16:
                raise ValueError(
                    "RUNTIME=openvino: DTYPE float16 is for GPUs; use float32, bfloat16 or QUANTIZE=int8"
                )
            if self.compile:
                raise ValueError("COMPILE is torch.compile; RUNTIME=openvino compiles its own graph")
        return self

    @property
    def served_model_name(self) -> str:
        """The name clients use in URLs: MODEL_NAME, else the last part of MODEL_ID."""
        if self.model_name:
            return self.model_name
        if self.model_id:
            return self.model_id.rstrip("/").rsplit("/", 1)[-1]
        return DEFAULT_MODEL_NAME


DEFAULT_MODEL_NAME = "mobilenet-v2"


def settings_markdown_table() -> str:
    """The README's settings table, generated so that a test can keep the two equal."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        default = getattr(default, "value", default)
        if name == "model_cache_dir":
            default = "~/.cache/image-embed"
        shown = "unset" if default is None else f"`{default}`"
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `{name.upper()}` | `{flag}` | {shown} | {field.description} |")
    return "\n".join(rows)
