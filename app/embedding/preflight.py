"""What can be checked about a model's settings before loading it: the model's folder (or
its hub id, when the hub is offline), the device and dtype, the pooling its family
supports, and what QUANTIZE=int8 needs. Each failure is one line that names the setting
and the fix; `python -m app` exits with it before the server starts, and a repository
model that fails it is marked failed with that line as the reason."""

from __future__ import annotations

import os
from pathlib import Path

from app.embedding.file_digest import folder_files
from app.embedding.gpu_presence import certainly_cpu
from app.embedding.model_folder import find_model_folder, is_open_clip_folder
from app.installed import is_installed
from app.settings.model import DTypeSetting, ModelSettings, QuantizeSetting, RuntimeSetting

# Calibration needs at least this many images: three quarters calibrate, a quarter checks.
MIN_CALIBRATION_IMAGES = 8

MODELS_WITHOUT_THE_HUB = "docs/models.md, 'Models without the hub'"


NNCF_MISSING = (
    "QUANTIZE=int8 needs NNCF, which is not installed: pip install -r requirements-quantize.txt "
    "(or serve float32: unset QUANTIZE)"
)


class StartupError(ValueError):
    """A setting that cannot work; the message names it and the way forward."""


def check_model_settings(settings: ModelSettings) -> None:
    folder = _check_source(settings)
    if folder is not None and not settings.trust_remote_code:
        _check_remote_code(folder)
    if folder is not None and is_open_clip_folder(folder):
        import_open_clip()  # or the StartupError that says how to install it
    _check_device_and_dtype(settings)
    if folder is not None and settings.pooling_strategy is not None:
        _check_pooling(settings, folder)
    if settings.quantize == QuantizeSetting.INT8:
        _check_int8(settings)


def looks_like_a_path(model_id: str) -> bool:
    """A hub id is 'name' or 'namespace/name'; anything else is meant as a folder."""
    return model_id.startswith(("/", ".", "~")) or "\\" in model_id or model_id.count("/") > 1


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _check_source(settings: ModelSettings) -> Path | None:
    """The model's local folder when it has one (None: the hub, or the embedded default)."""
    mounted = find_model_folder(settings.model_dir)
    if mounted is not None:
        return mounted
    model_id = settings.model_id
    if model_id is None:
        return None
    path = Path(model_id).expanduser()
    if path.is_dir():
        folder = find_model_folder(path)
        if folder is None:
            raise StartupError(
                f"MODEL_ID={model_id}: the folder holds no config.json; point MODEL_ID at the folder "
                f"with the model's config.json and weights ({MODELS_WITHOUT_THE_HUB})"
            )
        return folder
    if looks_like_a_path(model_id):
        raise StartupError(
            f"MODEL_ID={model_id}: no such folder; give the folder that holds the model's config.json, "
            f"or a HuggingFace id such as facebook/dinov2-small ({MODELS_WITHOUT_THE_HUB})"
        )
    if hub_offline() and not _in_hub_cache(model_id):
        raise StartupError(
            f"MODEL_ID={model_id}: not in the local HuggingFace cache and the hub is off "
            f"(HF_HUB_OFFLINE=1); on a connected machine run `python -m app.models fetch {model_id} "
            f"--out DIR`, copy DIR here and set MODEL_ID=DIR ({MODELS_WITHOUT_THE_HUB})"
        )
    return None


def _in_hub_cache(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _check_device_and_dtype(settings: ModelSettings) -> None:
    if settings.runtime == RuntimeSetting.OPENVINO:
        return  # CPU only, and the settings already refuse float16 with it
    if certainly_cpu(settings.device) and settings.dtype in (DTypeSetting.AUTO, DTypeSetting.FLOAT32):
        return  # float32 on the CPU always works: no torch import to say so
    from app.embedding.device import resolve_device, resolve_dtype

    try:
        device = resolve_device(settings.device)
    except ValueError as exc:
        raise StartupError(f"{exc}; use DEVICE=cpu, or DEVICE=auto to take what the machine has") from None
    try:
        resolve_dtype(settings.dtype, device)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def remote_code_refusal(location: str | Path) -> str:
    return (
        f"MODEL_ID={location}: its model family is defined by Python code in the model folder "
        "(config.json's auto_map), which runs only with TRUST_REMOTE_CODE=true: set it only for a "
        "folder you trust (the server then executes that code)"
    )


def _check_remote_code(folder: Path) -> None:
    """A config whose model type transformers does not know, with code of its own."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # loading says what is wrong with it
    if not config.get("auto_map"):
        return  # no code of its own: nothing to refuse, and no transformers import (seconds)
    from transformers import CONFIG_MAPPING

    if config.get("model_type") not in CONFIG_MAPPING:
        raise StartupError(remote_code_refusal(folder))


def _check_pooling(settings: ModelSettings, folder: Path) -> None:
    from app.embedding.families import folder_adapter

    adapter = folder_adapter(folder, settings.trust_remote_code)
    if adapter is None:
        return  # another family: its poolings are known once a forward pass has run
    if settings.pooling_strategy is None or settings.pooling_strategy in adapter.supported:
        return
    supported = ", ".join(p.value for p in adapter.supported)
    raise StartupError(
        f"POOLING_STRATEGY={settings.pooling_strategy.value}: {adapter.name} models support "
        f"{supported}; set one of those, or unset it for the family's default "
        f"({adapter.default.value})"
    )


def import_open_clip():
    """open_clip, or the StartupError that says how to install it (OpenCLIP checkpoints)."""
    try:
        import open_clip
    except ImportError as exc:
        raise StartupError(
            "OpenCLIP checkpoints are served through the open_clip_torch package: pip install -r "
            f"requirements-openclip.txt (open_clip_torch and torchvision) ({exc})"
        ) from None
    return open_clip


def import_nncf():
    """nncf, or the StartupError that says how to install it."""
    try:
        import nncf
    except ImportError:
        raise StartupError(NNCF_MISSING) from None
    return nncf


def _check_int8(settings: ModelSettings) -> None:
    if not is_installed("nncf"):
        raise StartupError(NNCF_MISSING)
    folder = settings.calibration_dir
    assert folder is not None  # ModelSettings requires it with QUANTIZE=int8
    files = folder_files(folder)  # the readable images among them are counted again when loading
    if len(files) < MIN_CALIBRATION_IMAGES:
        raise StartupError(
            f"CALIBRATION_DIR={folder}: {len(files)} files; QUANTIZE=int8 needs at least "
            f"{MIN_CALIBRATION_IMAGES} (a few hundred like the ones you will embed is better), "
            "or unset QUANTIZE to serve float32"
        )
