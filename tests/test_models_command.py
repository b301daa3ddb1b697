"""`python -m app.models`: a model folder prepared from the HuggingFace cache (as on a
connected machine, here with the hub off) or from a save_pretrained folder, then served
by MODEL_ID with no hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from app.settings import Settings
from tests.support import app_process, data_uri, encode, image_request, photo

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def models_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return subprocess.run(
        [sys.executable, "-m", "app.models", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment | {"HF_HUB_OFFLINE": "1", **env},
    )


def hub_cache_holding(cache: Path, repo_id: str, folder: Path) -> Path:
    """The HuggingFace cache layout a download leaves (refs/main -> snapshots/<commit>)."""
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(SNAPSHOT)
    shutil.copytree(folder, entry / "snapshots" / SNAPSHOT)
    (entry / "snapshots" / SNAPSHOT / "flax_model.msgpack").write_bytes(b"another framework's weights")
    return cache


def test_fetch_from_the_hub_cache_then_serve_without_the_hub(tiny_models, tmp_path):
    cache = hub_cache_holding(tmp_path / "hub", "acme/tiny-dinov2", tiny_models["dinov2"])
    out = tmp_path / "models" / "tiny-dinov2"
    result = models_command("fetch", "acme/tiny-dinov2", "--out", str(out), HF_HUB_CACHE=str(cache))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"serve it with: MODEL_ID={out} python -m app" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    with app_process(out, tmp_path / "mount") as server:
        body = image_request([data_uri(encode(photo("coffee").resize((64, 48))))])
        assert (
            httpx.post(f"{server.url}/v2/models/tiny-dinov2/infer", json=body, timeout=60).status_code == 200
        )


def test_fetch_a_save_pretrained_folder_keeps_the_text_tower(text_models, tmp_path):
    out = tmp_path / "clip"
    result = models_command("fetch", str(text_models["clip"]), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "clip (image and text)" in result.stdout


def test_fetch_of_a_model_that_is_nowhere_says_so(tmp_path):
    result = models_command(
        "fetch", "acme/absent", "--out", str(tmp_path / "x"), HF_HUB_CACHE=str(tmp_path / "hub")
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot fetch acme/absent: ")
