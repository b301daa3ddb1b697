"""Text towers: the server's text embeddings are the model's own `get_text_features`, in the
space its image embeddings live in, tokenized as the model was trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from app.embedding.backend import TEXT, PoolRequest
from app.embedding.selection import load_backend
from app.errors import BadRequest
from app.settings import Settings
from tests.support import photo
from tests.tiny_models import TEXT_FAMILIES

TEXTS = ["a photo of a cat", "coins", "", "an astronaut in space " * 40, "Ünïcödé ✓ 東京", "A Photo Of A Dog"]
# SigLIP 2 fixed-resolution: a SigLIP model with Gemma's tokenizer; NaFlex: its own classes.
SIGLIP = ("siglip", "siglip2", "siglip2_naflex")


def backend_for(folder, **overrides):
    fields = dict(
        model_id=str(folder), model_dir="/nonexistent", device="cpu", max_batch_size=8, runtime="torch"
    )
    return load_backend(Settings(**(fields | overrides)))


def reference_tokenizer(folder, family: str):
    """transformers' own: SigLIP 2's tokenizer class lower-cases as SigLIP 2 was trained."""
    if family.startswith("siglip2"):
        return tf.Siglip2Tokenizer.from_pretrained(folder)
    return tf.AutoTokenizer.from_pretrained(folder)


def reference_text_features(folder, family: str, texts: list[str], max_length: int) -> torch.Tensor:
    """transformers alone: the tokenizer as the model card says, then get_text_features."""
    model = tf.AutoModel.from_pretrained(folder).eval()
    tokenizer = reference_tokenizer(folder, family)
    encoded = tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.inference_mode():
        if family in SIGLIP:  # trained without an attention mask
            return model.get_text_features(input_ids=encoded["input_ids"]).pooler_output
        return model.get_text_features(**encoded).pooler_output


def embed_texts(backend, texts, normalize=False) -> np.ndarray:
    tokenized = backend.tokenize(texts)
    [rows], _ = backend.embed_batch(
        tokenized.tokens, [PoolRequest(len(texts), backend.default_pooling, normalize, TEXT)]
    )
    return rows


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_embeddings_are_the_models_text_features(family, text_models):
    backend = backend_for(text_models[family])
    assert backend.modalities == ("image", "text")
    assert backend.text.max_length == {"clip": 77, "metaclip_2": 77}.get(family, 64)
    expected = reference_text_features(text_models[family], family, TEXTS, backend.text.max_length)
    torch.testing.assert_close(torch.from_numpy(embed_texts(backend, TEXTS)), expected)
    # One text alone, or in another batch, gets the same row.
    torch.testing.assert_close(torch.from_numpy(embed_texts(backend, TEXTS[1:2])), expected[1:2])


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_server_embeddings_give_the_models_logits_per_image(family, text_models):
    """Normalised image and text embeddings from the server, with the model's logit scale
    (and SigLIP's bias), are the reference model's logits_per_image."""
    folder = text_models[family]
    backend = backend_for(folder, fast_preprocessing=False)
    images = [photo("chelsea"), photo("coffee")]
    texts = TEXTS[:3]
    image_rows, _ = backend.embed(images, backend.default_pooling, normalize=True)
    text_rows = embed_texts(backend, texts, normalize=True)
    model = tf.AutoModel.from_pretrained(folder).eval()
    tokens = reference_tokenizer(folder, family)(
        texts, padding="max_length", max_length=backend.text.max_length, return_tensors="pt"
    )
    # pixel_values; NaFlex: with its pixel_attention_mask and spatial_shapes.
    pixels = tf.AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    with torch.inference_mode():
        if family in SIGLIP:
            out = model(input_ids=tokens["input_ids"], **pixels)
        else:
            out = model(**tokens, **pixels)
    # With the scale and bias the server reports (model metadata's parameters).
    reported = backend.text_logits
    assert set(reported) == ({"logit_scale", "logit_bias"} if family in SIGLIP else {"logit_scale"})
    cosines = torch.from_numpy(image_rows @ text_rows.T)
    logits = cosines * reported["logit_scale"] + reported.get("logit_bias", 0.0)
    torch.testing.assert_close(logits, out.logits_per_image, rtol=1e-4, atol=1e-4)


def test_truncation_is_counted_and_keeps_clips_end_of_text(text_models):
    backend = backend_for(text_models["clip"])
    tokenized = backend.tokenize(["a photo of a cat", "the cat " * 100])
    assert tokenized.truncated == 1
    assert tokenized.token_counts[1] == 77
    ids = tokenized.tokens[1, 0]
    assert ids[-1] == backend.text.tokenizer.eos_token_id  # cut to 77 with its end-of-text kept
    # Short texts are padded only to 16 (CLIP's result does not depend on its padding: the
    # family test above compares them with transformers padded to 77).
    assert backend.tokenize(["a photo of a cat"]).tokens.shape == (1, 2, 16)


def test_siglip_is_padded_to_its_trained_length(text_models):
    """SigLIP attends to its padding (trained padded to 64): a shorter padding gives another
    embedding, so the server always pads to 64."""
    folder = text_models["siglip"]
    backend = backend_for(folder)
    text = ["a photo of a cat"]
    served = torch.from_numpy(embed_texts(backend, text))
    assert backend.tokenize(text).tokens.shape == (1, 2, 64)
    model = tf.AutoModel.from_pretrained(folder).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        short = model.get_text_features(
            input_ids=tokenizer(text, return_tensors="pt")["input_ids"]
        ).pooler_output
    assert not torch.allclose(served, short, atol=1e-3)
    torch.testing.assert_close(served, reference_text_features(folder, "siglip", text, 64))


def test_siglip2_texts_are_lower_cased_as_it_was_trained(text_models):
    """A SigLIP 2 fixed-resolution folder names GemmaTokenizer, which keeps case; the server
    lower-cases as transformers' Siglip2Tokenizer does."""
    folder = text_models["siglip2"]
    backend = backend_for(folder)
    served = embed_texts(backend, ["A Photo Of A Cat", "a photo of a cat"])
    np.testing.assert_array_equal(served[0], served[1])
    gemma = tf.AutoTokenizer.from_pretrained(folder)
    assert type(gemma).__name__ == "GemmaTokenizer"
    model = tf.AutoModel.from_pretrained(folder).eval()
    ids = gemma(["A Photo Of A Cat"], padding="max_length", max_length=64, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        cased = model.get_text_features(input_ids=ids).pooler_output
    assert not torch.allclose(torch.from_numpy(served[:1]), cased, atol=1e-3)


def test_image_embeddings_of_a_full_model_match_its_vision_tower(text_models, tiny_models):
    """One load, two towers: images through the full model equal the image-only loading."""
    for family in TEXT_FAMILIES:
        backend = backend_for(text_models[family], fast_preprocessing=False)
        images = [photo("rocket")]
        rows, _ = backend.embed(images, backend.default_pooling, normalize=False)
        model = tf.AutoModel.from_pretrained(text_models[family]).eval()
        pixels = tf.AutoImageProcessor.from_pretrained(text_models[family])(
            images=images, return_tensors="pt"
        )
        with torch.inference_mode():
            expected = model.get_image_features(**pixels).pooler_output
        torch.testing.assert_close(torch.from_numpy(rows), expected)


def test_image_only_folders_refuse_text_saying_why(tiny_models, text_models, tmp_path):
    vision_only = backend_for(tiny_models["clip_vision_model"])
    assert vision_only.modalities == ("image",)
    with pytest.raises(BadRequest, match="has no text tower: text embeddings need a full CLIP, MetaCLIP 2"):
        vision_only.check_text()
    openvino = backend_for(text_models["clip"], runtime="openvino", model_cache_dir=tmp_path)
    with pytest.raises(BadRequest, match="RUNTIME=openvino, which serves image embeddings only"):
        openvino.check_text()
