"""The fast uint8 preprocessing path against the transformers processors it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from app.embedding.pooling import PoolingStrategy
from app.embedding.preprocess import make_preprocessor
from app.embedding.torch_backend import TorchBackend
from app.images.decode import decode_image
from app.settings import Settings
from tests.support import encode, photo

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@pytest.mark.parametrize("family", ["dinov2", "clip", "siglip", "vit", "mobilenet_v2", "deit"])
def test_fast_path_matches_the_processor(family, tiny_models):
    processor = tf.AutoImageProcessor.from_pretrained(tiny_models[family])
    fast = make_preprocessor(processor)
    assert fast.fast
    for name in PHOTOS:
        image = photo(name)
        want = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        got = torch.from_numpy(fast(image))
        assert got.shape == want.shape and got.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cosine > 0.995, (name, float(cosine))
        assert (got - want).abs().mean() < 0.05


def test_processors_with_other_steps_are_called_as_they_are(tiny_models):
    processor = tf.AutoImageProcessor.from_pretrained(tiny_models["convnext"])  # crop_pct logic
    preprocessor = make_preprocessor(processor)
    assert not preprocessor.fast
    image = photo("coffee")
    torch.testing.assert_close(
        torch.from_numpy(preprocessor(image)),
        processor(images=[image], return_tensors="pt")["pixel_values"][0],
    )


@pytest.fixture(scope="module")
def mobilenets(default_model_cache):
    """The real MobileNetV2 with the processor and with the fast path."""

    def load(fast):
        return TorchBackend.from_settings(
            Settings(
                model_cache_dir=default_model_cache,
                model_dir="/nonexistent",
                device="cpu",
                fast_preprocessing=fast,
            )
        )

    return load(False), load(True)


def _embed(embedder, images):
    return embedder.embed(images, PoolingStrategy.MEAN, normalize=True)[0]


def test_fast_path_keeps_real_embeddings(mobilenets):
    reference, fast = mobilenets
    images = [photo(name) for name in PHOTOS]
    cosine = (_embed(reference, images) * _embed(fast, images)).sum(axis=1)
    assert cosine.min() > 0.9999, cosine


def test_draft_decoding_of_large_jpegs_keeps_real_embeddings(mobilenets):
    reference, fast = mobilenets
    files = [encode(photo(name).resize((1920, 1080)), quality=92) for name in PHOTOS]
    full = [decode_image(f, 10**8) for f in files]
    drafted = [decode_image(f, 10**8, fast.preprocessor.draft_min_side) for f in files]
    assert all(d.width < 1920 for d in drafted)  # decoded at a reduced scale
    cosine = (_embed(reference, full) * _embed(fast, drafted)).sum(axis=1)
    assert cosine.min() > 0.999, cosine


def test_images_smaller_than_the_crop_fall_back_to_the_processor(tiny_models):
    processor = tf.AutoImageProcessor.from_pretrained(tiny_models["vit"])  # resize to 32x32, no crop
    fast = make_preprocessor(processor)
    tiny = Image.fromarray(np.full((5, 7, 3), 200, np.uint8))
    assert fast(tiny).shape == (3, 32, 32)


@pytest.mark.parametrize("family", ["dinov2", "clip", "siglip", "vit", "mobilenet_v2", "deit"])
def test_the_steps_an_export_writes_give_the_same_pixels(family, tiny_models):
    """What an OpenVINO export serves from (fast_preprocess.json) is the fast path itself,
    bit for bit, without loading the processor."""
    import json

    from app.embedding.preprocess import FastPreprocessor, fast_steps

    processor = tf.AutoImageProcessor.from_pretrained(tiny_models[family])
    loads = []
    written = FastPreprocessor.from_steps(
        json.loads(json.dumps(fast_steps(processor))), lambda: loads.append(1) or processor
    )
    fast = make_preprocessor(processor)
    assert written.draft_min_side == fast.draft_min_side
    for name in PHOTOS:
        image = photo(name)
        np.testing.assert_array_equal(written(image), fast(image))
    assert loads == []  # the processor is never loaded for images the fast path takes


def test_an_image_smaller_than_the_crop_loads_the_processor_once():
    """From an export's steps, the processor (transformers) is loaded only when an image
    needs it: one smaller than the centre crop, which the processor pads."""
    from app.embedding.preprocess import FastPreprocessor, fast_steps

    processor = tf.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 24, "width": 24})
    loads = []
    written = FastPreprocessor.from_steps(fast_steps(processor), lambda: loads.append(1) or processor)
    small = Image.fromarray(np.full((10, 12, 3), 90, np.uint8))
    want = processor(images=[small], return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(written(small), want)
    np.testing.assert_array_equal(written(small), want)
    assert loads == [1]
