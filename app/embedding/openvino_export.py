"""The model converted for OpenVINO: the transformers model with its family's pooling in the
graph (dynamic batch), float32 or int8, saved as a folder that a restart reuses.

An export folder holds model.xml/.bin, the model's config and image processor files, and
embedding_export.json (family, poolings, embedding size, precision, int8 fidelity). The
cache (MODEL_CACHE_DIR/openvino/) keys each one by the model files' contents, the
precision, the graph's pooling outputs, the OpenVINO (and NNCF) version and, for int8, the
calibration images; `python -m app.quantize --out DIR` writes the same folder, and MODEL_ID
(or MODEL_DIR) pointing at one serves it as it is."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from app.embedding.file_digest import folder_digest, folder_manifest, manifest_mismatch
from app.embedding.model_source import ModelSource
from app.settings.model import ModelSettings, QuantizeSetting

log = logging.getLogger(__name__)

EXPORT_INFO = "embedding_export.json"
# Each file's size and sha256, written last: a cached folder is reused only when it matches
# (a disk that filled up mid-write, or a file damaged since, would otherwise serve forever).
MANIFEST = "export_manifest.json"
GRAPH_VERSION = 2  # bump when PooledOutputs, a family's pooling outputs (families.py) or the
# conversion changes what the graph computes
_COPIED_FILES = ("config.json", "preprocessor_config.json")
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]


@dataclass(frozen=True)
class ExportInfo:
    model_id: str
    model_type: str
    family: str
    poolings: list[str]  # the graph's outputs, in order, each named by its pooling
    default_pooling: str
    embedding_dim: int
    input_shape: list[int]  # [3, H, W]; NaFlex: [1 + max patches, values per patch]
    precision: str  # float32 or int8
    fidelity: dict | None = None  # int8: app.embedding.fidelity.Fidelity on held-out images


def read_info(folder: Path) -> ExportInfo:
    return ExportInfo(**json.loads((folder / EXPORT_INFO).read_text()))


def is_export(folder: Path) -> bool:
    return (Path(folder) / EXPORT_INFO).is_file()


def local_folder(source: ModelSource) -> Path:
    """The model's files on disk: the folder, or the hub snapshot in the HF cache."""
    if Path(source.location).is_dir():
        return Path(source.location)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source.location, allow_patterns=_WEIGHT_PATTERNS))


def ensure_export(settings: ModelSettings, source: ModelSource) -> tuple[Path, ExportInfo]:
    """The export folder for these settings: given as the model, cached, or built now."""
    folder = local_folder(source)
    if is_export(folder):  # an export folder given as the model: checked, never rebuilt
        problem = export_problem(folder, manifest_required=False)
        if problem:
            raise ValueError(
                f"the OpenVINO export folder {folder} is damaged ({problem}): write it again with "
                "python -m app.quantize, or point MODEL_ID at the original model"
            )
        return folder, read_info(folder)
    key = export_key(folder, settings)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.model_id).strip("-.")[-60:] or "model"
    target = Path(settings.model_cache_dir) / "openvino" / f"{slug}-{settings.quantize.value}-{key[:16]}"
    if target.exists():
        problem = export_problem(target, manifest_required=True)
        if problem is None:
            log.info("reusing the OpenVINO model cached at %s", target)
            return target, read_info(target)
        log.warning("the OpenVINO model cached at %s is damaged (%s): converting it again", target, problem)
        discard(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        build_export(folder, source.model_id, settings, staging)
        try:
            os.rename(staging, target)  # atomic: workers never see half a folder
        except OSError:
            if not is_export(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, read_info(target)


def export_problem(folder: Path, manifest_required: bool) -> str | None:
    """Why an export folder cannot be used as it is, or None."""
    if not is_export(folder):
        return f"{EXPORT_INFO} is missing"
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        return f"{MANIFEST} is missing" if manifest_required else None
    try:
        manifest = json.loads(manifest_path.read_text())
        return manifest_mismatch(folder, manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({type(exc).__name__})"


def discard(folder: Path) -> None:
    """Move a damaged cache folder aside (atomic: another worker never sees half of one),
    then delete it."""
    aside = folder.with_name(f".damaged-{folder.name}-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except OSError:  # another worker moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def export_key(folder: Path, settings: ModelSettings) -> str:
    import openvino

    # The model's files and this code's graph version decide the graph; the family's pooling
    # outputs follow from config.json (in the files). Nothing here imports transformers or
    # torch, so that a cached export serves without them (seconds of start-up).
    material = {
        "graph": GRAPH_VERSION,
        "openvino": openvino.__version__,
        "files": folder_digest(folder),
        "precision": settings.quantize.value,
    }
    if settings.quantize == QuantizeSetting.INT8:
        from app.embedding.preflight import import_nncf

        nncf = import_nncf()
        material |= {
            "nncf": nncf.__version__,
            "calibration": folder_digest(_calibration_dir(settings)),
            "max_cosine_drop": settings.quantize_max_cosine_drop,
            "fast_preprocessing": settings.fast_preprocessing,
            "max_num_patches": settings.max_num_patches,
        }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def build_export(folder: Path, model_id: str, settings: ModelSettings, out: Path) -> ExportInfo:
    """Convert (and, for int8, quantize) the model in `folder` into the export folder `out`."""
    import openvino as ov

    started = time.perf_counter()
    from app.embedding.open_clip_preprocess import OpenClipPreprocessor
    from app.embedding.preprocess import FAST_STEPS_FILE, fast_steps

    model, info, preprocessor = _convert(folder, model_id, settings)
    if settings.quantize == QuantizeSetting.INT8:
        model, info = _quantize(model, info, preprocessor, settings)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(preprocessor, OpenClipPreprocessor):  # served without the open_clip package
        preprocessor.processor.write(out)
    steps = fast_steps(preprocessor.processor)
    if steps is not None:  # served without transformers and torch
        (out / FAST_STEPS_FILE).write_text(json.dumps(steps, indent=2) + "\n")
    # compress_to_fp16 would halve the file and round every weight to float16: keep float32.
    ov.save_model(model, out / "model.xml", compress_to_fp16=False)
    for name in _COPIED_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    (out / EXPORT_INFO).write_text(json.dumps(asdict(info), indent=2) + "\n")
    manifest = {"files": folder_manifest(out, exclude=MANIFEST)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info(
        "converted %s for OpenVINO (%s, %s pooling outputs) in %.1f s",
        model_id,
        info.precision,
        "/".join(info.poolings),
        time.perf_counter() - started,
    )
    return info


def _convert(folder: Path, model_id: str, settings: ModelSettings):
    """(ov.Model, ExportInfo, the model's image preprocessor)."""
    import openvino as ov
    import torch

    from app.embedding.loader import load_model
    from app.embedding.naflex import NaflexPreprocessor
    from app.embedding.pooled_graph import PooledOutputs, resolve_adapter
    from app.embedding.preprocess import make_preprocessor, probe_image

    source = ModelSource(str(folder), model_id, str(folder), settings.trust_remote_code)
    loaded = load_model(source, torch.device("cpu"), torch.float32)
    preprocessor = make_preprocessor(loaded.processor, settings.fast_preprocessing, settings.max_num_patches)
    probe = torch.from_numpy(preprocessor(probe_image()))[None]
    # The batch is dynamic; so is a NaFlex batch's patch count (cut to its longest image).
    naflex = isinstance(preprocessor, NaflexPreprocessor)
    shape = ov.PartialShape([-1, -1, *probe.shape[2:]] if naflex else [-1, *probe.shape[1:]])
    adapter = resolve_adapter(loaded, probe)
    graph = PooledOutputs(loaded.model, adapter).eval()
    # The tracer warns where a shape becomes a constant (padding from the input's height and
    # width, a pooled output's size): the image size is fixed by the processor and the batch
    # stays dynamic, so those constants hold for every request (tests compare each family).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Tracing reads transformers' deprecated is_gradient_checkpointing (a FutureWarning on
        # every conversion that says nothing to a user of this server).
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
        embedding_dim = int(graph(probe)[0].shape[-1])
        model = ov.convert_model(graph, example_input=probe, input=[shape])
    for output, strategy in zip(model.outputs, adapter.supported, strict=True):
        output.get_tensor().set_names({strategy.value})
    info = ExportInfo(
        model_id=model_id,
        model_type=loaded.config.model_type,
        family=adapter.name,
        poolings=[p.value for p in adapter.supported],
        default_pooling=adapter.default.value,
        embedding_dim=embedding_dim,
        input_shape=list(probe.shape[1:]),
        precision="float32",
    )
    del loaded, graph
    gc.collect()  # the torch weights are not needed once converted
    return model, info, preprocessor


def _quantize(model, info: ExportInfo, preprocessor, settings: ModelSettings):
    from app.embedding.families import CONVOLUTIONAL_MODEL_TYPES
    from app.embedding.quantization import calibration_pixels, quantize_int8

    pixels = calibration_pixels(_calibration_dir(settings), preprocessor)
    transformer = info.family != "feature_map" and info.model_type not in CONVOLUTIONAL_MODEL_TYPES
    started = time.perf_counter()
    quantized, fidelity = quantize_int8(
        model,
        pixels,
        info.default_pooling,
        transformer,
        settings.quantize_max_cosine_drop,
    )
    log.info(
        "quantized %s to int8 from %d calibration images in %.1f s; on the %d held out: %s",
        info.model_id,
        len(pixels),
        time.perf_counter() - started,
        fidelity.images,
        fidelity.summary(),
    )
    info = replace(info, precision="int8", fidelity=fidelity.as_dict())
    return quantized, info


def _calibration_dir(settings: ModelSettings) -> Path:
    if settings.calibration_dir is None:  # ModelSettings requires it with QUANTIZE=int8
        raise ValueError("QUANTIZE=int8 needs CALIBRATION_DIR")
    return settings.calibration_dir
