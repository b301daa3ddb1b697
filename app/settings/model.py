"""The settings of one served model: where it comes from and how it is loaded, run, batched
and pooled. The one per-model type: `MODEL_ID` and the environment, a repository folder's
`serving.json` (app/inference/model_configs.py) and `python -m app` flags all produce it,
and the runtime backends receive nothing else."""

from __future__ import annotations

import enum
import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.embedding.pooling import PoolingStrategy


class DTypeSetting(enum.StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class RuntimeSetting(enum.StrEnum):
    AUTO = "auto"  # measured at start-up: app/embedding/auto_runtime.py
    TORCH = "torch"
    OPENVINO = "openvino"


class QuantizeSetting(enum.StrEnum):
    NONE = "none"
    INT8 = "int8"


class OpenVinoHint(enum.StrEnum):
    AUTO = "auto"  # measured at start-up, as RUNTIME=auto is
    THROUGHPUT = "throughput"
    LATENCY = "latency"


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "image-embed"
DEFAULT_MODEL_NAME = "mobilenet-v2"

# Read from the environment like every setting, but fixed by the repository for its models
# (name and folder are the folder's): a serving.json may not set them.
REPOSITORY_FIXED = frozenset({"model_name", "model_dir", "model_cache_dir"})

SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix="",
    case_sensitive=False,
    extra="ignore",
    env_ignore_empty=True,
    protected_namespaces=(),
    validate_default=True,
    frozen=True,
)


class ModelSettings(BaseSettings):
    """Every field is an environment variable (upper case) and a `--kebab-case` flag."""

    model_config = SETTINGS_CONFIG

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
        RuntimeSetting.AUTO,
        description="auto (on a CPU, torch or OpenVINO, whichever this machine runs fastest with torch's "
        "float32 embeddings, measured once and cached; torch on a GPU), torch, or openvino (CPU: the "
        "model converted at start-up, cached in MODEL_CACHE_DIR)",
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
        OpenVinoHint.AUTO,
        description="auto (measured at start-up, with RUNTIME), throughput (several batches in flight on "
        "their own streams) or latency (one batch on every core)",
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="most images in one forward pass; with RUNTIME=auto on a CPU, the most the measured "
        "forward batch may be (the smallest from 8 that reaches the runtime's best speed)",
    )
    max_batch_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="longest wait for more images before a forward pass"
    )
    compile: bool = Field(
        False, description="torch.compile the model at start-up, once per batch-size bucket"
    )
    channels_last: bool | None = Field(
        None, description="channels_last memory layout; default: on for convolutional models"
    )
    trust_remote_code: bool = Field(
        False,
        description="load a model whose family is defined by Python code in its folder (config.json's "
        "auto_map): this runs that code in the server; only for folders you trust",
    )
    fast_preprocessing: bool = Field(
        True, description="uint8 torch resize/crop/normalise instead of the transformers processor"
    )
    max_num_patches: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="SigLIP 2 NaFlex: patches per image at most (aspect ratio kept); default: the "
        "model folder's processor setting",
    )
    torch_threads: int = Field(
        0, ge=0, le=1024, description="intra-op threads (torch, or OpenVINO's); 0: usable cores / WORKERS"
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_PATTERN.match(value):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("model_id", "model_name")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _check_runtime(self) -> ModelSettings:
        if self.quantize == QuantizeSetting.INT8:
            if self.runtime == RuntimeSetting.TORCH:
                raise ValueError("QUANTIZE=int8 needs RUNTIME=openvino (or auto)")
            if self.calibration_dir is None:
                raise ValueError(
                    "QUANTIZE=int8 needs CALIBRATION_DIR: a folder of images like the ones you will "
                    "embed (a few hundred; at least 8, a quarter of them held out to check the result)"
                )
            if not self.calibration_dir.is_dir():
                raise ValueError(f"CALIBRATION_DIR {self.calibration_dir} is not a folder")
        # int8 runs on OpenVINO only, whether asked for or chosen by RUNTIME=auto.
        if self.runtime == RuntimeSetting.OPENVINO or self.quantize == QuantizeSetting.INT8:
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
