"""RUNTIME=openvino: every family and pooling gives torch's float32 embeddings; the converted
model is cached and reused; int8 passes the fidelity gate on the real MobileNetV2."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.embedding.fidelity import compare
from app.embedding.openvino_backend import OpenVinoBackend
from app.embedding.selection import load_backend
from app.settings import Settings
from tests.support import backend_settings, photo
from tests.tiny_models import FAMILIES

ROOT = Path(__file__).resolve().parents[2]

# float32 in both runtimes: only the order of float operations differs (measured on the tiny
# models: largest difference 2e-6 on values of order 1).
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def images():
    cat = photo("chelsea")
    return [cat, photo("coffee"), cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((90, 60))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-cache")


settings = backend_settings


def messages(caplog) -> list[str]:
    """The first word of each export log line: converted or reusing."""
    return [
        record.getMessage().split()[0]
        for record in caplog.records
        if record.name == "app.embedding.openvino_export"
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_and_pooling_gives_torchs_embeddings(family, tiny_models, images, cache):
    torch_backend = load_backend(settings(tiny_models[family], cache))
    openvino = load_backend(settings(tiny_models[family], cache, runtime="openvino"))
    assert isinstance(openvino, OpenVinoBackend)
    assert openvino.supported_poolings == torch_backend.supported_poolings
    assert openvino.default_pooling == torch_backend.default_pooling
    assert openvino.embedding_dim == torch_backend.embedding_dim
    assert openvino.describe() == {**torch_backend.describe(), "platform": "openvino", "dtype": "float32"}
    for pooling in torch_backend.supported_poolings:
        for normalize in (False, True):
            expected, _ = torch_backend.embed(images, pooling, normalize)
            got, _ = openvino.embed(images, pooling, normalize)
            np.testing.assert_allclose(got, expected, **TOLERANCE, err_msg=f"{pooling} {normalize}")


def test_a_batch_gives_each_request_its_own_pooling(tiny_models, images, cache):
    from app.embedding.backend import PoolRequest
    from app.embedding.pooling import PoolingStrategy as P

    backend = load_backend(settings(tiny_models["dinov2"], cache, runtime="openvino"))
    pixels = np.stack([backend.preprocessor(image) for image in images])
    (cls_rows, mean_rows), timing = backend.embed_batch(
        pixels, [PoolRequest(2, P.CLS, True), PoolRequest(1, P.MEAN, False)]
    )
    assert timing.batch_size == 3
    np.testing.assert_allclose(cls_rows, backend.embed(images[:2], P.CLS, True)[0], **TOLERANCE)
    np.testing.assert_allclose(mean_rows, backend.embed(images[2:], P.MEAN, False)[0], **TOLERANCE)


def test_the_converted_model_is_cached_and_reused(tiny_models, tmp_path, caplog):
    model = tiny_models["vit"]
    with caplog.at_level(logging.INFO, logger="app.embedding.openvino_export"):
        first = load_backend(settings(model, tmp_path, runtime="openvino"))
        assert messages(caplog) == ["converted"]
        caplog.clear()
        second = load_backend(settings(model, tmp_path, runtime="openvino"))
        assert messages(caplog) == ["reusing"]
    exports = list((tmp_path / "openvino").iterdir())
    assert len(exports) == 1 and (exports[0] / "model.bin").stat().st_size > 0
    probe = [photo("coffee")]
    np.testing.assert_array_equal(
        first.embed(probe, first.default_pooling, False)[0],
        second.embed(probe, second.default_pooling, False)[0],
    )
    # The weights are stored in float32 (OpenVINO's save_model would otherwise halve them).
    import transformers as tf

    parameters = sum(p.numel() for p in tf.AutoModel.from_pretrained(model).parameters())
    assert (exports[0] / "model.bin").stat().st_size >= 4 * parameters * 0.9
    assert json.loads((exports[0] / "embedding_export.json").read_text())["precision"] == "float32"


@pytest.mark.parametrize("damage", ["truncated weights", "flipped byte", "no manifest"])
def test_a_damaged_cache_entry_is_converted_again_and_named(tiny_models, tmp_path, caplog, damage):
    """A cached export whose files no longer match the sizes and digests written with them
    (a disk that filled up, a byte flipped since) is logged with its folder and rebuilt."""
    model = tiny_models["vit"]
    first = load_backend(settings(model, tmp_path, runtime="openvino"))
    [export] = list((tmp_path / "openvino").iterdir())
    weights = export / "model.bin"
    data = bytearray(weights.read_bytes())
    if damage == "truncated weights":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(data)
    else:
        (export / "export_manifest.json").unlink()
    with caplog.at_level(logging.INFO, logger="app.embedding.openvino_export"):
        second = load_backend(settings(model, tmp_path, runtime="openvino"))
    assert messages(caplog) == ["the", "converted"]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "app.embedding.openvino_export"][:1]
    assert str(export) in warning and "damaged" in warning and "converting it again" in warning
    probe = [photo("coffee")]
    np.testing.assert_array_equal(
        first.embed(probe, first.default_pooling, False)[0],
        second.embed(probe, second.default_pooling, False)[0],
    )
    assert [p.name for p in (tmp_path / "openvino").iterdir()] == [export.name]


def test_a_damaged_export_folder_given_as_the_model_is_refused_with_the_way_forward(tiny_models, tmp_path):
    load_backend(settings(tiny_models["vit"], tmp_path / "cache", runtime="openvino"))
    [export] = list((tmp_path / "cache" / "openvino").iterdir())
    weights = export / "model.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"is damaged \(model.bin has 100 bytes.*python -m app.quantize"):
        load_backend(settings(export, tmp_path / "other-cache", runtime="openvino"))


def test_changed_model_files_are_converted_again(tiny_models, tmp_path, caplog):
    import shutil

    model = shutil.copytree(tiny_models["convnext"], tmp_path / "model")
    load_backend(settings(model, tmp_path, runtime="openvino"))
    config = json.loads((model / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5  # a different model: its graph must be rebuilt
    (model / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="app.embedding.openvino_export"):
        load_backend(settings(model, tmp_path, runtime="openvino"))
    assert messages(caplog) == ["converted"]
    assert len(list((tmp_path / "openvino").iterdir())) == 2


def test_bfloat16_is_an_inference_hint_on_the_same_graph(tiny_models, images, cache):
    backend = load_backend(settings(tiny_models["dinov2"], cache, runtime="openvino", dtype="bfloat16"))
    assert backend.describe()["dtype"] == "bfloat16"
    reference = load_backend(settings(tiny_models["dinov2"], cache, runtime="openvino"))
    fidelity = compare(
        reference.embed(images, reference.default_pooling, True)[0],
        backend.embed(images, backend.default_pooling, True)[0],
    )
    assert fidelity.min_cosine > 0.99


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(runtime="torch", quantize="int8"), "QUANTIZE=int8 needs RUNTIME=openvino"),
        (dict(quantize="int8"), "QUANTIZE=int8 needs CALIBRATION_DIR"),  # RUNTIME=auto: OpenVINO
        (dict(runtime="openvino", quantize="int8"), "QUANTIZE=int8 needs CALIBRATION_DIR"),
        (dict(runtime="openvino", quantize="int8", calibration_dir="/nonexistent"), "is not a folder"),
        (dict(runtime="openvino", device="cuda"), "RUNTIME=openvino runs on the CPU"),
        (dict(runtime="openvino", compile=True), "COMPILE is torch.compile"),
    ],
)
def test_impossible_runtime_settings_are_refused_at_start_up(overrides, message):
    with pytest.raises(ValueError, match=message):
        Settings(model_dir="/nonexistent", **overrides)


def test_start_up_without_calibration_images_says_what_is_missing(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "app", "--runtime", "openvino", "--quantize", "int8"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert "QUANTIZE=int8 needs CALIBRATION_DIR" in process.stderr and "Traceback" not in process.stderr


def test_too_few_calibration_images_is_a_clear_error(tiny_models, tmp_path):
    for index in range(3):
        photo("coffee").save(tmp_path / f"{index}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r": 4 files; QUANTIZE=int8 needs at least 8"):
        load_backend(
            settings(
                tiny_models["dinov2"],
                tmp_path / "cache",
                runtime="openvino",
                quantize="int8",
                calibration_dir=tmp_path,
            )
        )


def test_int8_at_start_up_is_quantized_once_and_cached(tiny_models, images, tmp_path, caplog):
    from bench.photos import write_calibration_dir

    calibration = write_calibration_dir(tmp_path / "calibration", count=16)
    fields = dict(runtime="openvino", quantize="int8", calibration_dir=calibration)
    backend = load_backend(settings(tiny_models["dinov2"], tmp_path / "cache", **fields))
    assert backend.describe()["dtype"] == "int8"
    assert backend.info.fidelity["images"] == 4  # a quarter of 16 held out
    rows, _ = backend.embed(images, backend.default_pooling, True)
    assert rows.shape == (3, backend.embedding_dim) and np.isfinite(rows).all()
    with caplog.at_level(logging.INFO, logger="app.embedding.openvino_export"):
        load_backend(settings(tiny_models["dinov2"], tmp_path / "cache", **fields))
    assert messages(caplog) == ["reusing"]


# The families of the newer encoders (DINOv3, MetaCLIP 2, SigLIP 2 fixed and NaFlex): NNCF
# quantizes each graph, the held-out photos measure it, and the int8 model serves. Random
# tiny weights say nothing of int8's quality, so the gate is opened and its figures checked.
@pytest.mark.parametrize(
    "family", ["dinov3_vit", "dinov3_convnext", "metaclip_2_vision_model", "siglip", "siglip2_naflex"]
)
def test_int8_quantizes_and_serves_the_newer_families(family, tiny_models, images, tmp_path):
    from bench.photos import write_calibration_dir

    calibration = write_calibration_dir(tmp_path / "calibration", count=16)
    int8 = load_backend(
        settings(
            tiny_models[family],
            tmp_path / "cache",
            runtime="openvino",
            quantize="int8",
            calibration_dir=calibration,
            quantize_max_cosine_drop=0.999,
            quantize_min_neighbours_kept=0.0,
        )
    )
    float32 = load_backend(settings(tiny_models[family], tmp_path / "cache", runtime="openvino"))
    assert int8.describe()["dtype"] == "int8"
    fidelity = int8.info.fidelity
    assert fidelity["images"] == 4 and 0 <= fidelity["neighbours_kept"] <= 4
    assert -1 <= fidelity["min_cosine"] <= 1
    pooling = int8.default_pooling
    got, _ = int8.embed(images, pooling, True)
    expected, _ = float32.embed(images, pooling, True)
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert not np.array_equal(got, expected)  # the int8 graph ran, not the float32 one
    # Still the float32 model's function (0.92-0.999 measured on these tiny models): a broken
    # quantization (a family's op misread) gives unrelated vectors.
    assert compare(expected, got).min_cosine > 0.8


def test_float32_openvino_keeps_the_real_models_embeddings(default_model_cache):
    from bench.fidelity import embed_all
    from bench.photos import evaluation_photos

    base = dict(model_cache_dir=default_model_cache, model_dir="/nonexistent", device="cpu", max_batch_size=8)
    photos = evaluation_photos()
    fidelity = compare(embed_all(base, photos), embed_all(dict(base, runtime="openvino"), photos))
    assert fidelity.images == 32 and fidelity.neighbours_kept == 32
    assert fidelity.min_cosine >= 0.99999


def test_int8_on_the_real_model_and_the_neighbour_gate(default_model_cache, tmp_path):
    """`python -m app.quantize` on the real MobileNetV2, calibrated on photos that the gate's
    photos are not among; then served from its folder. On this calibration set int8 keeps
    the nearest neighbour of 22 of the 24 held-out images: the default gate (every one)
    refuses it, a gate of 90% lets it through."""
    from app.embedding.preflight import StartupError
    from app.embedding.quantization import check_fidelity_gate
    from bench.fidelity import embed_all
    from bench.photos import evaluation_photos, write_calibration_dir

    calibration = write_calibration_dir(tmp_path / "calibration")
    out = tmp_path / "int8"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.quantize",
            "--images",
            str(calibration),
            "--out",
            str(out),
            "--cache",
            str(default_model_cache),
            "--min-neighbours-kept",
            "0.9",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(next(line for line in process.stdout.splitlines() if line.startswith("{")))
    fidelity = report["fidelity"]
    assert fidelity["images"] == 24 and fidelity["min_cosine"] >= 0.99
    if fidelity["neighbours_kept"] < 24:
        with pytest.raises(
            StartupError, match=rf"kept the nearest neighbour of {fidelity['neighbours_kept']}/24"
        ):
            check_fidelity_gate(fidelity, 0.005, 1.0)
    assert f"RUNTIME=openvino MODEL_ID={out}" in process.stdout

    photos = evaluation_photos()
    base = dict(model_cache_dir=default_model_cache, model_dir="/nonexistent", device="cpu", max_batch_size=8)
    reference = embed_all(base, photos)
    fidelity = compare(reference, embed_all(dict(base, model_id=str(out), runtime="openvino"), photos))
    # Measured on the 32 evaluation photos: min cosine 0.99x, every neighbour kept (docs/runtimes.md, "int8").
    assert fidelity.neighbours_kept == fidelity.images == 32
    assert fidelity.min_cosine >= 0.99


def test_the_server_answers_with_openvino_as_it_does_with_torch(tiny_models, tmp_path):
    import httpx

    from tests.support import data_uri, embeddings_of, encode, image_request, run_server, server_settings

    request = image_request(
        [data_uri(encode(photo("coffee"))), data_uri(encode(photo("rocket")))],
        pooling_strategy="mean",
        normalize="true",
    )
    answers = {}
    for runtime in ("torch", "openvino"):
        config = server_settings(
            tiny_models["siglip"], tmp_path, runtime=runtime, model_cache_dir=tmp_path / "c"
        )
        with run_server(config) as server:
            metadata = httpx.get(f"{server.url}/v2/models/{server.model}", timeout=30).json()
            assert metadata["platform"] == ("openvino" if runtime == "openvino" else "pytorch_transformers")
            response = httpx.post(server.infer_url(), json=request, timeout=60)
            assert response.status_code == 200, response.text
            answers[runtime] = embeddings_of(response)
    np.testing.assert_allclose(answers["openvino"], answers["torch"], **TOLERANCE)


def test_an_export_folder_is_refused_by_the_torch_runtime(tiny_models, cache):
    backend = load_backend(settings(tiny_models["resnet"], cache, runtime="openvino"))
    with pytest.raises(ValueError, match="is an OpenVINO export: serve it with RUNTIME=openvino"):
        load_backend(settings(backend.folder, cache))


def test_quantize_command_refuses_a_folder_without_enough_images(tiny_models, tmp_path):
    photo("coffee").save(tmp_path / "one.png")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.quantize",
            "--model",
            str(tiny_models["vit"]),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 2
    assert "holds 1 readable images; QUANTIZE=int8 needs at least 8" in process.stderr
    assert "Traceback" not in process.stderr


def test_a_conversion_prints_no_future_warning(tiny_models, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        backend = load_backend(settings(tiny_models["vit"], tmp_path, runtime="openvino"))
    assert backend.describe()["platform"] == "openvino"


def test_converting_a_model_sends_no_usage_telemetry(tiny_models, tmp_path):
    """OpenVINO's converter reports usage to Google Analytics unless told not to, keeping a
    client id and a usage count in ~/intel. A server start-up that converts a model runs
    none of it (real start-up order: a fresh process)."""
    home = tmp_path / "home"
    home.mkdir()
    script = (
        "from app.embedding.selection import load_backend\n"
        "from app.settings import Settings\n"
        f"load_backend(Settings(model_id={str(tiny_models['vit'])!r}, model_dir='/nonexistent', "
        f"model_cache_dir={str(tmp_path / 'cache')!r}, runtime='openvino', openvino_hint='latency', "
        "max_batch_size=2))\n"
        "from openvino.tools.ovc import convert_impl\n"
        "print(convert_impl.tm.__name__)\n"
    )
    # CI=true would turn the converter's reporting off by itself; a server has no such variable.
    env = {key: value for key, value in os.environ.items() if key != "CI"} | {"HOME": str(home)}
    process = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.strip().splitlines()[-1] == "openvino.tools.ovc.telemetry_stub"
    assert not (home / "intel").exists()


_LOAD_WITHOUT_TORCH = """
import json, sys
from pathlib import Path
from PIL import Image
from app.embedding.selection import load_backend
from app.settings import Settings

settings = Settings(**json.loads(sys.argv[1]))
backend = load_backend(settings)
images = [Image.open(path).convert("RGB") for path in sys.argv[2:]]
rows, _ = backend.embed(images, backend.default_pooling, True)
print(json.dumps({"modules": sorted(m for m in ("torch", "transformers") if m in sys.modules),
                  "fast": backend.preprocessor.fast, "rows": rows.tolist()}))
"""


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_a_cached_export_serves_without_importing_torch_or_transformers(
    device, tiny_models, images, tmp_path
):
    """Start-up from a cached OpenVINO export (a server's, a Ray actor's) needs neither torch
    nor transformers: their imports took 4.5 of 4.9 s of load_backend on a 2-vCPU AVX2 host.
    The embeddings are the ones the process that converted it serves."""
    from app.embedding.gpu_presence import certainly_cpu

    if not certainly_cpu(device):
        pytest.skip("DEVICE=auto on a machine with a GPU driver: torch says which device")
    fields = dict(model_id=str(tiny_models["dinov2"]), model_dir="/nonexistent", device=device)
    fields |= dict(model_cache_dir=str(tmp_path / "cache"), runtime="openvino", openvino_hint="throughput")
    converted = load_backend(Settings(**fields))  # converts: torch and transformers run here
    expected, _ = converted.embed(images, converted.default_pooling, True)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    process = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_TORCH, json.dumps(fields), *paths],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert process.returncode == 0, process.stderr[-2000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["modules"] == []
    assert report["fast"] is True
    np.testing.assert_allclose(np.array(report["rows"], np.float32), expected, rtol=1e-5, atol=1e-6)
