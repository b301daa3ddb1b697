"""Whether DEVICE means the CPU, known without importing torch (seconds of start-up that an
OpenVINO model does not need). CUDA (/dev/nvidiactl), ROCm (/dev/kfd) and WSL's GPU
(/dev/dxg) work only through their drivers' device files, in containers too (the NVIDIA
container toolkit mounts them); macOS may have MPS. Where any could be, torch decides."""

from __future__ import annotations

import os
import sys

GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def certainly_cpu(device_setting: str) -> bool:
    if device_setting == "cpu":
        return True
    if device_setting != "auto" or sys.platform == "darwin":
        return False
    return not any(os.path.exists(path) for path in GPU_DEVICE_FILES)
