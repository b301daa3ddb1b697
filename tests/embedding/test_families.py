"""Every family's pooling against a reference computed directly with transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from app.embedding.pooling import PoolingStrategy
from app.embedding.torch_backend import TorchBackend
from app.errors import UnsupportedPooling
from app.settings import Settings
from tests.support import photo

CLS, MEAN, MAX = PoolingStrategy.CLS, PoolingStrategy.MEAN, PoolingStrategy.MAX


def _tokens(h, first=0):
    return {MEAN: h[:, first:].mean(1), MAX: h[:, first:].amax(1)}


def _feature_map(out):
    h = out.last_hidden_state
    return {MEAN: out.pooler_output.reshape(h.shape[0], -1), MAX: h.amax(dim=(2, 3))}


def reference(family: str, path, pixels: torch.Tensor) -> dict:
    """pooling -> embeddings computed with the transformers classes alone."""
    if family in ("dinov2", "dinov2_with_registers"):
        cls = tf.Dinov2Model if family == "dinov2" else tf.Dinov2WithRegistersModel
        out = cls.from_pretrained(path)(pixel_values=pixels)
        h = out.last_hidden_state
        # CLS is the layer-normed first token, which is also the model's pooler_output.
        torch.testing.assert_close(h[:, 0], out.pooler_output)
        registers = 4 if family == "dinov2_with_registers" else 0
        return {CLS: h[:, 0], **_tokens(h, first=1 + registers)}
    if family == "dinov3_vit":
        out = tf.DINOv3ViTModel.from_pretrained(path)(pixel_values=pixels)
        h = out.last_hidden_state
        torch.testing.assert_close(h[:, 0], out.pooler_output)
        return {CLS: h[:, 0], **_tokens(h, first=1 + 4)}  # 4 register tokens
    if family == "dinov3_convnext":
        out = tf.DINOv3ConvNextModel.from_pretrained(path)(pixel_values=pixels)
        # Token 0 is the layer-normed average pool (the pooler_output), then the positions.
        return {CLS: out.pooler_output, **_tokens(out.last_hidden_state, first=1)}
    if family == "clip":
        return {CLS: tf.CLIPModel.from_pretrained(path).get_image_features(pixel_values=pixels).pooler_output}
    if family == "clip_vision_model":
        return {CLS: tf.CLIPVisionModelWithProjection.from_pretrained(path)(pixel_values=pixels).image_embeds}
    if family == "metaclip_2_vision_model":
        model = tf.MetaClip2VisionModelWithProjection.from_pretrained(path)
        return {CLS: model(pixel_values=pixels).image_embeds}
    if family == "siglip":
        out = tf.SiglipModel.from_pretrained(path).vision_model(pixel_values=pixels)
        return {CLS: out.pooler_output, **_tokens(out.last_hidden_state)}
    if family == "vit":
        # The classifier's ViT has no pooler: the embedding is the layer-normed CLS token.
        h = tf.ViTForImageClassification.from_pretrained(path).vit(pixel_values=pixels).last_hidden_state
        return {CLS: h[:, 0], **_tokens(h, first=1)}
    if family in ("swin", "swinv2"):
        cls = tf.SwinModel if family == "swin" else tf.Swinv2Model
        out = cls.from_pretrained(path)(pixel_values=pixels)
        return {MEAN: out.pooler_output, MAX: out.last_hidden_state.amax(1)}
    if family == "convnext":
        return _feature_map(tf.ConvNextModel.from_pretrained(path)(pixel_values=pixels))
    if family == "mobilenet_v2":
        return _feature_map(tf.MobileNetV2Model.from_pretrained(path)(pixel_values=pixels))
    if family == "resnet":
        return _feature_map(tf.ResNetModel.from_pretrained(path)(pixel_values=pixels))
    if family == "deit":
        return _tokens(tf.DeiTModel.from_pretrained(path)(pixel_values=pixels).last_hidden_state)
    raise AssertionError(family)


EXPECTED_DEFAULTS = {
    "dinov2": CLS,
    "dinov2_with_registers": CLS,
    "dinov3_vit": CLS,
    "dinov3_convnext": CLS,
    "clip": CLS,
    "clip_vision_model": CLS,
    "metaclip_2_vision_model": CLS,
    "siglip": CLS,
    "vit": CLS,
    "swin": MEAN,
    "swinv2": MEAN,
    "convnext": MEAN,
    "mobilenet_v2": MEAN,
    "resnet": MEAN,
    "deit": MEAN,
}


@pytest.fixture(scope="module")
def images():
    cat = photo("chelsea")
    return [cat, photo("coffee"), cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((90, 60))]


def load(path, tmp_path_factory, **overrides) -> TorchBackend:
    # The transformers processor, so that only pooling differs from the reference
    # (the fast path has its own fidelity tests).
    overrides.setdefault("fast_preprocessing", False)
    settings = Settings(
        model_id=str(path), model_dir=tmp_path_factory.mktemp("empty"), device="cpu", **overrides
    )
    return TorchBackend.from_settings(settings)


@pytest.mark.parametrize("family", sorted(EXPECTED_DEFAULTS))
def test_every_pooling_matches_transformers(family, tiny_models, images, tmp_path_factory):
    path = tiny_models[family]
    embedder = load(path, tmp_path_factory, max_batch_size=2)  # 3 images: two forward passes
    with torch.inference_mode():
        pixels = tf.AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt")[
            "pixel_values"
        ]
        expected = reference(family, path, pixels)
    assert set(embedder.supported_poolings) == set(expected)
    assert embedder.default_pooling == EXPECTED_DEFAULTS[family]
    for strategy, want in expected.items():
        got, timings = embedder.embed(images, strategy, normalize=False)
        assert [t.batch_size for t in timings] == [2, 1]
        torch.testing.assert_close(torch.from_numpy(got), want.float(), rtol=1e-4, atol=1e-5)
        assert embedder.embedding_dim == got.shape[1]
        normalized, _ = embedder.embed(images, strategy, normalize=True)
        torch.testing.assert_close(
            torch.from_numpy(normalized),
            torch.nn.functional.normalize(want.float(), dim=-1),
            rtol=1e-4,
            atol=1e-5,
        )
    for strategy in set(PoolingStrategy) - set(expected):
        with pytest.raises(UnsupportedPooling) as refused:
            embedder.embed(images, strategy, normalize=False)
        message = str(refused.value)
        assert strategy.value in message and all(p.value in message for p in expected)


def test_clip_uses_the_checkpoint_projection_size(tiny_models, tmp_path_factory):
    embedder = load(tiny_models["clip"], tmp_path_factory)
    assert embedder.embedding_dim == 24  # the top-level projection_dim, not the vision default 512


def test_vit_classification_checkpoint_embeds_the_same_after_reload(tiny_models, images, tmp_path_factory):
    first, _ = load(tiny_models["vit"], tmp_path_factory).embed(images, CLS, False)
    second, _ = load(tiny_models["vit"], tmp_path_factory).embed(images, CLS, False)
    torch.testing.assert_close(torch.from_numpy(first), torch.from_numpy(second), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["dinov2_with_registers", "dinov3_vit"])
def test_dino_mean_excludes_cls_and_register_tokens(family, tiny_models, images, tmp_path_factory):
    path = tiny_models[family]
    embedder = load(path, tmp_path_factory)
    got, _ = embedder.embed(images[:1], MEAN, False)
    pixels = tf.AutoImageProcessor.from_pretrained(path)(images=images[:1], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.inference_mode():
        h = tf.AutoModel.from_pretrained(path)(pixel_values=pixels).last_hidden_state
    # 1 CLS + 4 registers + 16 patches; including the first five tokens gives another answer.
    assert h.shape[1] == 21
    assert not torch.allclose(torch.from_numpy(got), h.mean(1), atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(got), h[:, 5:].mean(1), rtol=1e-4, atol=1e-5)


def test_clip_vision_tower_without_projection_is_refused(tmp_path, tmp_path_factory):
    from tests.tiny_models import VIT

    tf.CLIPVisionModel(tf.CLIPVisionConfig(**VIT, image_size=32, patch_size=8)).save_pretrained(tmp_path)
    tf.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="visual_projection"):
        load(tmp_path, tmp_path_factory)


def test_reduced_precision_runs_and_stays_close(tiny_models, images, tmp_path_factory):
    path = tiny_models["dinov2"]
    full, _ = load(path, tmp_path_factory).embed(images, CLS, True)
    half, _ = load(path, tmp_path_factory, dtype="bfloat16").embed(images, CLS, True)
    assert half.dtype == full.dtype == "float32"
    cosine = (full * half).sum(axis=1)
    assert cosine.min() > 0.99


def _dinov3_reference_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """DINOv3ViTImageProcessor's steps (transformers' image_processing_dinov3_vit.py, whose
    class needs torchvision): rescale, then an antialiased bilinear resize of the float image
    (what torchvision's tensor resize runs: torch's interpolate), then ImageNet normalisation."""
    x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_a_dinov3_checkpoint_with_its_own_processor_config_is_served(runtime, tiny_models, images, tmp_path):
    """DINOv3's hub folders name DINOv3ViTImageProcessorFast, a torchvision class: the folder
    loads anyway, its resize and normalisation run through Pillow, and the embeddings are
    those of the processor's own steps."""
    import json
    import shutil

    from app.embedding.selection import load_backend

    folder = shutil.copytree(tiny_models["dinov3_vit"], tmp_path / "dinov3")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "DINOv3ViTImageProcessorFast",
                "do_resize": True,
                "size": {"height": 32, "width": 32},
                "resample": 2,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            }
        )
    )
    with pytest.raises(ImportError, match="orchvision"):
        tf.AutoImageProcessor.from_pretrained(folder)
    settings = Settings(
        model_id=str(folder),
        model_dir=tmp_path / "empty",
        device="cpu",
        runtime=runtime,
        model_cache_dir=tmp_path / "cache",
    )
    backend = load_backend(settings)
    served, _ = backend.embed(images, CLS, normalize=True)
    model = tf.DINOv3ViTModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        pixels = torch.cat([_dinov3_reference_pixels(image, 32) for image in images])
        expected = torch.nn.functional.normalize(model(pixel_values=pixels).pooler_output, dim=-1)
    cosine = (torch.from_numpy(served) * expected).sum(dim=-1)
    assert cosine.min() > 0.9999, cosine  # measured 0.999999 on both runtimes
