"""The server's own settings: listeners, request limits and budgets, URL policy, the model
repository and its control, logging. Shared by every model it serves; per-model settings
are app/settings/model.py's."""

from __future__ import annotations

import enum
import ipaddress
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings

from app.settings.model import SETTINGS_CONFIG


class ModelControlMode(enum.StrEnum):
    """Triton's names: none refuses repository load/unload; explicit allows them."""

    NONE = "none"
    EXPLICIT = "explicit"


class ServerSettings(BaseSettings):
    """Every field is an environment variable (upper case) and a `--kebab-case` flag."""

    model_config = SETTINGS_CONFIG

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
        description="inputs (images and texts) admitted and not yet answered; past it: 503 + Retry-After",
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

    cache_bytes: int = Field(
        128 * 1024 * 1024,
        ge=0,
        le=2**40,
        description="in-process embedding cache, in bytes (LRU; keyed by the input's bytes and the model's "
        "files, runtime, precision and pooling); 0: off",
    )
    cache_url: str | None = Field(
        None,
        description="shared embedding cache across replicas: redis://[:password@]host:port/db, rediss:// "
        "(TLS) or unix:// (Redis or Valkey); unset: local cache only",
    )
    cache_ttl_s: float = Field(
        7 * 86400, gt=0, le=365 * 86400, description="CACHE_URL: how long a shared entry lives"
    )
    cache_timeout_ms: float = Field(
        5.0,
        gt=0,
        le=10_000,
        description="CACHE_URL: longest one call to the shared cache may take; past it the input is a "
        "miss (a cache down is skipped for 2 s, then tried again)",
    )
    cache_key_prefix: str = Field(
        "embed:",
        max_length=256,
        description="CACHE_URL: prefix of every key this server writes (a Redis shared with other "
        "applications or tenants: give each its own)",
    )
    cache_max_entry_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="largest embedding stored in either cache, in bytes (larger ones are computed each time)",
    )

    @field_validator("cache_url")
    @classmethod
    def _check_cache_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.split("://", 1)[0].lower() not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix:// (a Redis or Valkey server)")
        return value.strip()

    log_level: str = Field("info", description="debug, info, warning, error")
    log_format: str = Field(
        "text", pattern="^(text|json)$", description="text, or json (one object per line)"
    )

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be debug, info, warning, error or critical")
        return value

    @field_validator("model_control_token")
    @classmethod
    def _strip_token(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _check_server(self) -> ServerSettings:
        if self.model_repository is not None and not self.model_repository.is_dir():
            raise ValueError(f"MODEL_REPOSITORY {self.model_repository} is not a folder")
        if self.model_control_token is not None and self.model_control_mode != ModelControlMode.EXPLICIT:
            raise ValueError(
                "MODEL_CONTROL_TOKEN is set but MODEL_CONTROL_MODE is none: set MODEL_CONTROL_MODE=explicit "
                "to allow repository load and unload, or unset the token"
            )
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"GRPC_PORT and PORT are both {self.port}: give gRPC its own port or 0")
        return self
