"""SigLIP 2 NaFlex: each image at its own aspect ratio and patch count, equal to transformers'
own Siglip2ImageProcessor and Siglip2 vision tower, in both runtimes, batched or alone."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from app.embedding.backend import PoolRequest
from app.embedding.naflex import NaflexPreprocessor
from app.embedding.pooling import PoolingStrategy
from app.embedding.preprocess import make_preprocessor
from app.embedding.selection import load_backend
from tests.support import (
    backend_settings,
    data_uri,
    embeddings_of,
    encode,
    image_request,
    photo,
    run_server,
    server_settings,
)

CLS, MEAN, MAX = PoolingStrategy.CLS, PoolingStrategy.MEAN, PoolingStrategy.MAX
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def images():
    """Landscape, portrait, square, a wide and a tall strip: five patch grids (4x5, 5x4, 4x4,
    1x15, 10x1 under the tiny processor's 20 patches; NaFlex scales small images up)."""
    cat = photo("chelsea")
    return [
        cat,
        cat.transpose(Image.Transpose.ROTATE_90),
        photo("rocket").resize((200, 200)),
        photo("coffee").resize((300, 20)),
        cat.resize((30, 300)),
    ]


def reference(folder, images, max_num_patches: int | None = None):
    """pooling -> [n, D] from transformers alone (its processor pads every image to
    max_num_patches), and the processor's spatial shapes."""
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    extra = {"max_num_patches": max_num_patches} if max_num_patches else {}
    inputs = processor(images=images, return_tensors="pt", **extra)
    with torch.inference_mode():
        out = tf.Siglip2VisionModel.from_pretrained(folder)(**inputs)
    hidden, own = out.last_hidden_state, inputs["pixel_attention_mask"].bool()[..., None]
    pooled = {
        CLS: out.pooler_output,
        MEAN: (hidden * own).sum(1) / own.sum(1),
        MAX: hidden.masked_fill(~own, float("-inf")).amax(1),
    }
    return pooled, inputs


def backend_for(folder, tmp_path, **overrides):
    return load_backend(backend_settings(folder, tmp_path, **({"max_batch_size": 8} | overrides)))


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_every_pooling_equals_transformers_at_each_images_own_shape(runtime, tiny_models, images, tmp_path):
    folder = tiny_models["siglip2_naflex"]
    backend = backend_for(folder, tmp_path, runtime=runtime)
    assert backend.describe()["family"] == "siglip2"
    assert set(backend.supported_poolings) == {CLS, MEAN, MAX} and backend.default_pooling == CLS
    expected, inputs = reference(folder, images)
    assert len({tuple(shape) for shape in inputs["spatial_shapes"].tolist()}) == len(images)
    for strategy, want in expected.items():
        got, timings = backend.embed(images, strategy, normalize=False)
        assert [t.batch_size for t in timings] == [len(images)]  # one forward for five shapes
        torch.testing.assert_close(torch.from_numpy(got), want, **TOLERANCE, msg=str(strategy))
        alone = np.concatenate([backend.embed([image], strategy, False)[0] for image in images])
        torch.testing.assert_close(torch.from_numpy(alone), want, **TOLERANCE, msg=str(strategy))


def test_padding_never_enters_mean_or_max(tiny_models, images, tmp_path):
    """The tall strip (10 patches) batched with 20-patch images: its mean and max over the
    padded positions would differ from those over its own patches."""
    folder = tiny_models["siglip2_naflex"]
    backend = backend_for(folder, tmp_path)
    expected, inputs = reference(folder, images)
    with torch.inference_mode():
        hidden = tf.Siglip2VisionModel.from_pretrained(folder)(**inputs).last_hidden_state
    for strategy, over_padding in ((MEAN, hidden.mean(1)), (MAX, hidden.amax(1))):
        got = torch.from_numpy(backend.embed(images, strategy, normalize=False)[0])
        assert not torch.allclose(got[-1], over_padding[-1], atol=1e-3), strategy
        torch.testing.assert_close(got[-1], expected[strategy][-1], **TOLERANCE)


def test_a_batch_is_cut_to_its_longest_image(tiny_models, images, tmp_path):
    backend = backend_for(tiny_models["siglip2_naflex"], tmp_path)
    packed = [backend.preprocessor(image) for image in images]
    counts = [int(p[0, 0] * p[0, 1]) for p in packed]
    assert (max(counts), min(counts)) == (20, 10)  # max_num_patches of the tiny processor: 20
    short = np.stack(packed[2:])  # without the two 20-patch images
    assert backend.preprocessor.batch_inputs(short).shape[1] == 1 + max(counts[2:]) < 21
    rows, timing = backend.embed_batch(short, [PoolRequest(3, CLS, True)])
    assert timing.batch_size == 3
    np.testing.assert_allclose(rows[0], backend.embed(images[2:], CLS, True)[0], **TOLERANCE)


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (1000, 1), (1, 1000), (7, 7), (640, 480), (33, 8)])
def test_the_fast_path_equals_the_processor(tiny_models, size):
    processor = tf.AutoImageProcessor.from_pretrained(tiny_models["siglip2_naflex"])
    fast, slow = make_preprocessor(processor), make_preprocessor(processor, allow_fast=False)
    assert isinstance(fast, NaflexPreprocessor) and fast.fast and not slow.fast
    image = photo("astronaut").resize(size)
    got, want = fast(image), slow(image)
    np.testing.assert_array_equal(got[0], want[0])  # the same patch grid
    np.testing.assert_allclose(got, want, atol=1e-6)
    features = processor(images=[image], return_tensors="np")
    rows, columns = features["spatial_shapes"][0]
    assert tuple(got[0, :2]) == (rows, columns)
    np.testing.assert_allclose(got[1:], features["pixel_values"][0], atol=1e-6)


def test_max_num_patches_sets_each_images_patch_budget(tiny_models, images, tmp_path):
    folder = tiny_models["siglip2_naflex"]
    backend = backend_for(folder, tmp_path, max_num_patches=8)
    assert backend.preprocessor(images[0]).shape == (1 + 8, 3 * 8 * 8)
    expected, inputs = reference(folder, images, max_num_patches=8)
    assert int(inputs["spatial_shapes"].prod(-1).max()) <= 8
    got, _ = backend.embed(images, CLS, normalize=False)
    torch.testing.assert_close(torch.from_numpy(got), expected[CLS], **TOLERANCE)
    default, _ = backend_for(folder, tmp_path).embed(images[:1], CLS, normalize=False)
    assert not np.allclose(default, got[:1], atol=1e-3)


def test_max_num_patches_is_a_per_model_setting(tiny_models, tmp_path):
    from app.inference.model_configs import model_configs
    from app.settings.model import ModelSettings
    from app.settings.server import ServerSettings

    repository = tmp_path / "models"
    (repository / "naflex-8").mkdir(parents=True)
    (repository / "naflex-8" / "serving.json").write_text(
        json.dumps({"model_id": str(tiny_models["siglip2_naflex"]), "max_num_patches": 8})
    )
    [config] = model_configs(ServerSettings(model_repository=repository), ModelSettings())
    assert config.settings.max_num_patches == 8
    (repository / "naflex-8" / "serving.json").write_text(json.dumps({"max_num_patches": 0}))
    with pytest.raises(ValueError, match="max_num_patches"):
        model_configs(ServerSettings(model_repository=repository), ModelSettings())


def test_max_num_patches_on_a_fixed_size_model_is_ignored_with_a_warning(tiny_models, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="app.embedding.preprocess"):
        backend = backend_for(tiny_models["siglip"], tmp_path, max_num_patches=8)
    assert backend.preprocessor(photo("coffee")).shape == (3, 32, 32)
    assert any("MAX_NUM_PATCHES=8 ignored" in r.getMessage() for r in caplog.records)


def test_served_over_v2_with_images_of_different_shapes(tiny_models, images, tmp_path):
    folder = tiny_models["siglip2_naflex"]
    expected, _ = reference(folder, images)
    want = torch.nn.functional.normalize(expected[CLS], dim=-1).numpy()
    uris = [data_uri(encode(image, "PNG"), "image/png") for image in images]  # lossless
    with run_server(server_settings(folder, tmp_path)) as server:
        metadata = httpx.get(f"{server.url}/v2/models/{server.model}").json()
        assert metadata["parameters"]["family"] == "siglip2"
        response = httpx.post(server.infer_url(), json=image_request(uris, normalize="true"), timeout=60)
        assert response.status_code == 200, response.text
    np.testing.assert_allclose(embeddings_of(response), want, **TOLERANCE)
