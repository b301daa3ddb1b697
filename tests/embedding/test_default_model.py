"""The embedded default model: real MobileNetV2 ImageNet weights, converted correctly."""

from __future__ import annotations

import torch
import transformers as tf

from app.embedding.default_model import DEFAULT_MODEL_ID, ensure_default_model
from app.embedding.model_source import resolve_source
from app.embedding.torch_backend import TorchBackend
from app.settings import Settings
from tests.support import photo

EGYPTIAN_CAT = 285


def test_conversion_classifies_the_cat_photo(default_model_cache):
    folder = ensure_default_model(default_model_cache)
    model = tf.MobileNetV2ForImageClassification.from_pretrained(folder).eval()
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=[photo("chelsea")], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        logits = model(pixel_values=pixels).logits
    assert int(logits.argmax(-1)) == EGYPTIAN_CAT


def test_conversion_runs_once(default_model_cache):
    folder = ensure_default_model(default_model_cache)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model(default_model_cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_no_model_id_serves_the_default_model(default_model_cache, tmp_path):
    settings = Settings(model_dir=tmp_path / "none", model_cache_dir=default_model_cache, device="cpu")
    source = resolve_source(settings)
    assert source.model_id == DEFAULT_MODEL_ID
    assert settings.served_model_name == "mobilenet-v2"
    embedder = TorchBackend.from_settings(settings)
    assert embedder.model_type == "mobilenet_v2" and embedder.embedding_dim == 1280


def test_model_dir_wins_when_it_holds_a_model(tiny_models, tmp_path):
    settings = Settings(model_dir=tiny_models["dinov2"], model_id="facebook/dinov2-large", device="cpu")
    source = resolve_source(settings)
    assert source.location == str(tiny_models["dinov2"])
    assert source.model_id == "facebook/dinov2-large"  # reported as the deployment names it
    assert settings.served_model_name == "dinov2-large"
