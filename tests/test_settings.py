"""Settings from the environment and `python -m app` flags; a bad value stops start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.__main__ import load_settings
from app.embedding.pooling import PoolingStrategy
from app.settings import Settings
from app.settings.model import DTypeSetting

ROOT = Path(__file__).resolve().parents[1]


def test_original_environment_names(monkeypatch):
    monkeypatch.setenv("MODEL_ID", "facebook/dinov2-base")
    monkeypatch.setenv("POOLING_STRATEGY", "mean")
    monkeypatch.setenv("NORMALIZE_EMBEDDINGS", "true")
    settings = Settings()
    assert settings.model_id == "facebook/dinov2-base"
    assert settings.served_model_name == "dinov2-base"  # derived from the id
    assert settings.pooling_strategy is PoolingStrategy.MEAN
    assert settings.normalize_embeddings is True
    assert settings.model_dir == Path("/mnt/models") and settings.port == 8080
    monkeypatch.setenv("MODEL_NAME", "dinov2-large")
    assert Settings().served_model_name == "dinov2-large"


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("DTYPE", "float32")
    settings = load_settings(["--port", "9100", "--dtype", "bfloat16", "--max-images-per-request", "3"])
    assert settings.port == 9100 and settings.dtype is DTypeSetting.BFLOAT16
    assert settings.max_images_per_request == 3


def test_empty_environment_values_mean_unset(monkeypatch):
    monkeypatch.setenv("POOLING_STRATEGY", "")
    assert Settings().pooling_strategy is None


@pytest.mark.parametrize(
    "args, env, setting",
    [
        (["--port", "eighty"], {}, "PORT"),
        ([], {"POOLING_STRATEGY": "median"}, "POOLING_STRATEGY"),
        ([], {"DEVICE": "tpu"}, "DEVICE"),
        ([], {"NORMALIZE_EMBEDDINGS": "perhaps"}, "NORMALIZE_EMBEDDINGS"),
        (["--fetch-timeout-s", "-1"], {}, "FETCH_TIMEOUT_S"),
        ([], {"CACHE_URL": "http://user:hunter2@cache:6379"}, "CACHE_URL"),
        (["--cache-bytes", "-1"], {}, "CACHE_BYTES"),
    ],
)
def test_invalid_value_stops_start_up_with_one_line(args, env, setting):
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    result = subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"invalid setting {setting}="), result.stderr
    assert "hunter2" not in result.stderr  # a URL's password is never echoed


def test_help_lists_every_setting():
    result = subprocess.run(
        [sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in result.stdout
