"""OpenCLIP checkpoints in the hub layout: image and text embeddings are open_clip's own
(`encode_image`, `encode_text` after its transform and tokenizer), in torch and OpenVINO, and
the model's logits come back from the served embeddings. Runs where open_clip_torch is
installed (scripts/check builds that venv: scripts/openclip-venv)."""

from __future__ import annotations

import httpx
import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from app.embedding.open_clip_preprocess import PREPROCESS_FILE, OpenClipPreprocessor, OpenClipProcessor
from app.embedding.pooling import PoolingStrategy
from app.embedding.selection import load_backend
from tests.embedding.test_text import embed_texts
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
from tests.tiny_models import (
    OPEN_CLIP_MOBILECLIP_CONFIG,
    OPEN_CLIP_SIGLIP_CONFIG,
    build_open_clip_model,
    build_open_clip_timm_model,
)

TOLERANCE = dict(rtol=1e-4, atol=1e-5)
TEXTS = ["a photo of a cat", "COINS on a table", "", "an astronaut in space " * 30]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_open_clip_model(tmp_path_factory.mktemp("open-clip") / "tiny")


@pytest.fixture(scope="module")
def reference(folder):
    """open_clip alone: its model, inference transform and tokenizer."""
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), transform, open_clip.get_tokenizer(f"local-dir:{folder}")


@pytest.fixture(scope="module")
def images():
    cat = photo("chelsea")  # 451 x 300: odd crop offsets after the resize
    return [cat, cat.transpose(Image.Transpose.ROTATE_90), photo("coffee"), cat.resize((33, 97))]


def backend_for(folder, tmp_path, **overrides):
    return load_backend(backend_settings(folder, tmp_path, **({"max_batch_size": 8} | overrides)))


def reference_images(reference, images) -> torch.Tensor:
    model, transform, _ = reference
    with torch.inference_mode():
        return model.encode_image(torch.stack([transform(image) for image in images]))


def reference_texts(reference, texts) -> torch.Tensor:
    model, _, tokenizer = reference
    with torch.inference_mode():
        return model.encode_text(tokenizer(texts))


def test_image_and_text_embeddings_are_open_clips_own(folder, reference, images, tmp_path):
    backend = backend_for(folder, tmp_path)
    assert backend.model_type == "open_clip" and backend.describe()["family"] == "open_clip"
    assert backend.modalities == ("image", "text")
    assert backend.supported_poolings == (PoolingStrategy.CLS,)
    assert backend.preprocessor.fast
    rows, _ = backend.embed(images, PoolingStrategy.CLS, normalize=False)
    torch.testing.assert_close(torch.from_numpy(rows), reference_images(reference, images), **TOLERANCE)
    texts = torch.from_numpy(embed_texts(backend, TEXTS))
    torch.testing.assert_close(texts, reference_texts(reference, TEXTS))


def test_the_models_logits_come_back_from_the_served_embeddings(folder, reference, images, tmp_path):
    backend = backend_for(folder, tmp_path)
    image_rows, _ = backend.embed(images, PoolingStrategy.CLS, normalize=True)
    text_rows = embed_texts(backend, TEXTS, normalize=True)
    model, transform, tokenizer = reference
    with torch.inference_mode():
        image_features, text_features, scale = model(
            torch.stack([transform(i) for i in images]), tokenizer(TEXTS)
        )[:3]
    expected = scale * image_features @ text_features.T
    assert set(backend.text_logits) == {"logit_scale"}
    served = torch.from_numpy(image_rows @ text_rows.T) * backend.text_logits["logit_scale"]
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)


def test_long_texts_are_counted_and_cut_keeping_the_end_of_text(folder, tmp_path):
    backend = backend_for(folder, tmp_path)
    tokenized = backend.tokenize(TEXTS)
    assert tokenized.truncated == 1 and tokenized.token_counts[-1] == 77
    assert tokenized.tokens.shape == (len(TEXTS), 2, 77)
    assert tokenized.tokens[-1, 0, -1] == backend.text.tokenizer.eot_token_id


@pytest.mark.parametrize(
    "preprocess",
    [
        {},
        {"interpolation": "bilinear"},
        {"resize_mode": "squash", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    ],
    ids=["shortest-bicubic", "shortest-bilinear", "squash"],
)
def test_the_fast_path_equals_open_clips_transform(preprocess, images):
    cfg = {"size": 32, **OPEN_CLIP_PREPROCESS, **preprocess}
    fast = OpenClipPreprocessor(OpenClipProcessor.from_dict(cfg))
    assert fast.fast
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    # 35x32 and 32x39 leave odd margins to crop (1.5, 3.5 pixels): CenterCrop rounds them.
    sizes = [(300, 301), (64, 31), (35, 32), (32, 39)]
    for image in [*images, *(photo("astronaut").resize(size) for size in sizes)]:
        np.testing.assert_allclose(fast(image), transform(image).numpy(), atol=1e-5, err_msg=str(image.size))


def test_modes_the_fast_path_does_not_cover_run_open_clips_transform(images):
    cfg = {"size": 32, **OPEN_CLIP_PREPROCESS, "resize_mode": "longest"}
    preprocessor = OpenClipPreprocessor(OpenClipProcessor.from_dict(cfg))
    assert not preprocessor.fast
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    np.testing.assert_array_equal(preprocessor(images[0]), transform(images[0]).numpy())


def test_openvino_serves_the_image_tower_without_the_package_at_serve_time(folder, images, tmp_path):
    torch_rows, _ = backend_for(folder, tmp_path).embed(images, PoolingStrategy.CLS, normalize=True)
    openvino = backend_for(folder, tmp_path, runtime="openvino")
    assert openvino.describe()["platform"] == "openvino" and openvino.model_type == "open_clip"
    [export] = list((tmp_path / "openvino").iterdir())
    assert (export / PREPROCESS_FILE).is_file()  # its preprocessing, read back without open_clip
    rows, _ = openvino.embed(images, PoolingStrategy.CLS, normalize=True)
    np.testing.assert_allclose(rows, torch_rows, **TOLERANCE)


def test_served_over_v2_with_its_text_tower(folder, reference, images, tmp_path):
    uris = [data_uri(encode(image, "PNG"), "image/png") for image in images]
    want = torch.nn.functional.normalize(reference_images(reference, images), dim=-1).numpy()
    with run_server(server_settings(folder, tmp_path)) as server:
        metadata = httpx.get(f"{server.url}/v2/models/{server.model}", timeout=30).json()
        assert metadata["parameters"]["family"] == "open_clip"
        assert metadata["parameters"]["modalities"] == ["image", "text"]
        model = reference[0]
        assert metadata["parameters"]["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
        response = httpx.post(server.infer_url(), json=image_request(uris, normalize="true"), timeout=60)
        assert response.status_code == 200, response.text
    np.testing.assert_allclose(embeddings_of(response), want, **TOLERANCE)


OPEN_CLIP_PREPROCESS = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    return build_open_clip_timm_model(
        tmp_path_factory.mktemp("open-clip-siglip") / "tiny", OPEN_CLIP_SIGLIP_CONFIG
    )


def test_a_siglip_checkpoint_timm_tower_hf_tokenizer_and_logit_bias(siglip_folder, images, tmp_path):
    """ViT-B-16-SigLIP's layout (Marqo's fashionSigLIP, timm's SigLIP): a timm image tower,
    the HuggingFace tokenizer in the folder, a logit bias. Images, texts and the model's
    own logits are open_clip's, in torch; OpenVINO serves the timm tower equal to torch."""
    location = f"local-dir:{siglip_folder}"
    model, _, transform = open_clip.create_model_and_transforms(location)
    model = model.eval()
    tokenizer = open_clip.get_tokenizer(location)
    assert type(tokenizer).__name__ == "HFTokenizer"
    backend = backend_for(siglip_folder, tmp_path)
    assert backend.preprocessor.fast and backend.modalities == ("image", "text")
    rows, _ = backend.embed(images, PoolingStrategy.CLS, normalize=True)
    text_rows = embed_texts(backend, TEXTS, normalize=True)
    with torch.inference_mode():
        pixels = torch.stack([transform(image) for image in images])
        image_features, text_features, scale, bias = model(pixels, tokenizer(TEXTS))
    torch.testing.assert_close(torch.from_numpy(rows), image_features, **TOLERANCE)
    torch.testing.assert_close(torch.from_numpy(text_rows), text_features, **TOLERANCE)
    assert set(backend.text_logits) == {"logit_scale", "logit_bias"}
    assert backend.text_logits["logit_bias"] == pytest.approx(float(bias)) == pytest.approx(-10.0)
    served = rows @ text_rows.T * backend.text_logits["logit_scale"] + backend.text_logits["logit_bias"]
    torch.testing.assert_close(
        torch.from_numpy(served), scale * image_features @ text_features.T + bias, rtol=1e-4, atol=1e-4
    )
    # Token counts from the tokenizer itself, before its cut at 64: the long text is counted.
    tokenized = backend.tokenize(TEXTS)
    assert tokenized.truncated == 1 and tokenized.token_counts[-1] == 64
    assert tokenized.token_counts[0] == len(tokenizer.tokenizer(TEXTS[0])["input_ids"]) < 64

    openvino = backend_for(siglip_folder, tmp_path, runtime="openvino")
    ov_rows, _ = openvino.embed(images, PoolingStrategy.CLS, normalize=True)
    np.testing.assert_allclose(ov_rows, rows, **TOLERANCE)


def test_a_mobileclip_checkpoint_fastvit_tower(images, tmp_path):
    """MobileCLIP2-S0's layout (Apple's checkpoints): timm's FastViT image tower, open_clip's
    text tower without a causal mask, CLIP's tokenizer. Images and texts are open_clip's in
    torch; OpenVINO converts the FastViT tower equal to torch."""
    folder = build_open_clip_timm_model(tmp_path / "mobileclip", OPEN_CLIP_MOBILECLIP_CONFIG)
    location = f"local-dir:{folder}"
    model, _, transform = open_clip.create_model_and_transforms(location)
    model = model.eval()
    tokenizer = open_clip.get_tokenizer(location)
    backend = backend_for(folder, tmp_path)
    assert backend.preprocessor.fast and backend.modalities == ("image", "text")
    rows, _ = backend.embed(images, PoolingStrategy.CLS, normalize=True)
    with torch.inference_mode():
        image_features = model.encode_image(
            torch.stack([transform(image) for image in images]), normalize=True
        )
        text_features = model.encode_text(tokenizer(TEXTS), normalize=True)
    torch.testing.assert_close(torch.from_numpy(rows), image_features, **TOLERANCE)
    texts = embed_texts(backend, TEXTS, normalize=True)
    torch.testing.assert_close(torch.from_numpy(texts), text_features, **TOLERANCE)
    assert set(backend.text_logits) == {"logit_scale"}

    openvino = backend_for(folder, tmp_path, runtime="openvino")
    ov_rows, _ = openvino.embed(images, PoolingStrategy.CLS, normalize=True)
    np.testing.assert_allclose(ov_rows, rows, **TOLERANCE)
