"""Pick the torch device and dtype from the DEVICE and DTYPE settings."""

from __future__ import annotations

import logging

import torch

from app.settings.model import DTypeSetting

log = logging.getLogger(__name__)

_TORCH_DTYPES = {
    DTypeSetting.FLOAT32: torch.float32,
    DTypeSetting.FLOAT16: torch.float16,
    DTypeSetting.BFLOAT16: torch.bfloat16,
}


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={setting} but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"DEVICE={setting} but MPS is not available on this machine")
    return device


def resolve_dtype(setting: DTypeSetting, device: torch.device) -> torch.dtype:
    if setting == DTypeSetting.AUTO:
        return torch.float16 if device.type == "cuda" else torch.float32
    if setting == DTypeSetting.FLOAT16 and device.type == "cpu":
        # CPU float16 kernels are slow or missing; bfloat16 is the CPU's reduced precision.
        raise ValueError("DTYPE=float16 needs a GPU; use bfloat16 or float32 on CPU")
    if setting == DTypeSetting.BFLOAT16 and device.type == "cpu" and not cpu_has_native_bfloat16():
        log.warning(
            "DTYPE=bfloat16 on a CPU without native bf16 (no AVX512-BF16/AMX): expect it to run "
            "several times slower than float32"
        )
    return _TORCH_DTYPES[setting]


def cpu_has_native_bfloat16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
