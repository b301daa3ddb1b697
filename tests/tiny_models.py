"""Tiny random-weight models of every supported family, saved with their image processors
so that the server's own loading code reads them like any downloaded checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
SQUARE_32 = {"height": 32, "width": 32}
NAFLEX_VISION = dict(**VIT, patch_size=8, num_patches=16)


def _processor_resize_crop(cls, shortest: int, crop: int, **extra):
    return cls(size={"shortest_edge": shortest}, crop_size={"height": crop, "width": crop}, **extra)


def _builders():
    """family -> (model factory, image processor factory)."""
    return {
        "dinov2": (
            lambda: tf.Dinov2Model(tf.Dinov2Config(**VIT, image_size=28, patch_size=7)),
            lambda: _processor_resize_crop(tf.BitImageProcessorPil, 36, 28),
        ),
        "dinov2_with_registers": (
            lambda: tf.Dinov2WithRegistersModel(
                tf.Dinov2WithRegistersConfig(**VIT, image_size=28, patch_size=7, num_register_tokens=4)
            ),
            lambda: _processor_resize_crop(tf.BitImageProcessorPil, 36, 28),
        ),
        # DINOv3's own image processor needs torchvision: these carry DINOv2's, so that only
        # the models are under test (see app/embedding/preprocess.py for real checkpoints).
        "dinov3_vit": (
            lambda: tf.DINOv3ViTModel(
                tf.DINOv3ViTConfig(**VIT, image_size=32, patch_size=8, num_register_tokens=4)
            ),
            lambda: _processor_resize_crop(tf.BitImageProcessorPil, 36, 32),
        ),
        "dinov3_convnext": (
            lambda: tf.DINOv3ConvNextModel(tf.DINOv3ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1])),
            lambda: _processor_resize_crop(tf.BitImageProcessorPil, 36, 32),
        ),
        # A full CLIPModel checkpoint whose projection size (24) differs from the vision
        # config's default (512): the loader must take the top-level value.
        "clip": (
            lambda: tf.CLIPModel(
                tf.CLIPConfig(
                    text_config=TEXT,
                    vision_config=dict(**VIT, image_size=32, patch_size=8),
                    projection_dim=24,
                )
            ),
            lambda: _processor_resize_crop(tf.CLIPImageProcessorPil, 32, 32),
        ),
        "clip_vision_model": (
            lambda: tf.CLIPVisionModelWithProjection(
                tf.CLIPVisionConfig(**VIT, image_size=32, patch_size=8, projection_dim=20)
            ),
            lambda: _processor_resize_crop(tf.CLIPImageProcessorPil, 32, 32),
        ),
        # MetaCLIP 2's image tower alone (its full model with a tokenizer: build_text_model).
        "metaclip_2_vision_model": (
            lambda: tf.MetaClip2VisionModelWithProjection(
                tf.MetaClip2VisionConfig(**VIT, image_size=32, patch_size=8, projection_dim=20)
            ),
            lambda: _processor_resize_crop(tf.CLIPImageProcessorPil, 32, 32),
        ),
        "siglip": (
            lambda: tf.SiglipModel(
                tf.SiglipConfig(text_config=TEXT, vision_config=dict(**VIT, image_size=32, patch_size=8))
            ),
            lambda: tf.SiglipImageProcessorPil(size=SQUARE_32),
        ),
        # SigLIP 2 NaFlex's image tower: a 4x4 position grid resized to each image's own
        # patch grid, at most 20 patches (so images of other aspect ratios have other counts).
        "siglip2_naflex": (
            lambda: tf.Siglip2VisionModel(tf.Siglip2VisionConfig(**NAFLEX_VISION)),
            lambda: tf.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=20),
        ),
        # A classification checkpoint: it has no pooler weights.
        "vit": (
            lambda: tf.ViTForImageClassification(
                tf.ViTConfig(**VIT, image_size=32, patch_size=8, num_labels=5)
            ),
            lambda: tf.ViTImageProcessorPil(size=SQUARE_32),
        ),
        "swin": (
            lambda: tf.SwinModel(
                tf.SwinConfig(
                    image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
                )
            ),
            lambda: tf.ViTImageProcessorPil(size=SQUARE_32),
        ),
        "swinv2": (
            lambda: tf.Swinv2Model(
                tf.Swinv2Config(
                    image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
                )
            ),
            lambda: tf.ViTImageProcessorPil(size=SQUARE_32),
        ),
        "convnext": (
            lambda: tf.ConvNextModel(tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
            lambda: tf.ConvNextImageProcessorPil(size={"shortest_edge": 32}),
        ),
        "mobilenet_v2": (
            lambda: tf.MobileNetV2Model(tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35)),
            lambda: _processor_resize_crop(tf.MobileNetV2ImageProcessorPil, 36, 32),
        ),
        # Families without an adapter of their own take the generic rule: a CNN (NCHW map) ...
        "resnet": (
            lambda: tf.ResNetModel(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])),
            lambda: _processor_resize_crop(tf.ConvNextImageProcessorPil, 32, 32),
        ),
        # ... and a token model.
        "deit": (
            lambda: tf.DeiTModel(tf.DeiTConfig(**VIT, image_size=32, patch_size=8)),
            lambda: _processor_resize_crop(tf.DeiTImageProcessorPil, 36, 32),
        ),
    }


FAMILIES = tuple(_builders())


def build_tiny_model(family: str, folder: Path) -> Path:
    make_model, make_processor = _builders()[family]
    torch.manual_seed(0)
    model = make_model().eval()
    model.save_pretrained(folder)
    make_processor().save_pretrained(folder)
    return folder


# Text towers (issue: text-to-image search): full CLIP, MetaCLIP 2 and SigLIP models with
# working tokenizers built offline: a small byte-level BPE vocabulary for CLIP, small trained
# sentencepiece models for SigLIP and for MetaCLIP 2's XLM-RoBERTa tokenizer. Real sequence
# lengths (77, 64): padding is part of what is tested.
TEXT_FAMILIES = ("clip", "metaclip_2", "siglip", "siglip2", "siglip2_naflex")
_CORPUS = [
    "a photo of a cat",
    "a photo of a dog",
    "a cup of coffee on a table",
    "a rocket launch at night",
    "an astronaut in space",
    "a black and white photo of a camera man",
    "coins on a table",
]


def _clip_tokenizer(folder: Path):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("o", "f</w>")]
    vocab = {token: i for i, token in enumerate(characters + [c + "</w>" for c in characters])}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = tf.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _sentencepiece_model(**ids) -> bytes:
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 10),
        model_writer=model,
        vocab_size=80,
        model_type="unigram",
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    return model.getvalue()


def _xlm_roberta_tokenizer(folder: Path):
    """MetaCLIP 2's tokenizer class (XLM-RoBERTa's layout: <s>, <pad>, </s>, <unk>, the
    pieces, <mask>) over a small trained vocabulary."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=_sentencepiece_model())
    pieces = [
        (processor.id_to_piece(i), processor.get_score(i))
        for i in range(processor.get_piece_size())
        if not processor.is_control(i) and not processor.is_unknown(i)
    ]
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    tokenizer = tf.XLMRobertaTokenizer(vocab=specials + pieces + [("<mask>", 0.0)], model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _siglip_tokenizer(folder: Path):
    model = _sentencepiece_model(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model)
    tokenizer = tf.SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _gemma_tokenizer(folder: Path):
    """SigLIP 2's tokenizer as its fixed-resolution folders name it (GemmaTokenizer: no BOS,
    EOS added, <pad> 0), over a vocabulary of letters of both cases, digits and bytes."""
    import string

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    letters = ["▁", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits, *".,!?'-"]
    pieces = [*specials, *letters, *(f"<0x{b:02X}>" for b in range(256)), "▁a", "▁p"]
    tokenizer = tf.GemmaTokenizer(
        vocab={piece: index for index, piece in enumerate(pieces)},
        merges=[("▁", "a"), ("▁", "p")],
        add_bos_token=False,
        add_eos_token=True,
        model_max_length=64,
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_text_model(family: str, folder: Path) -> Path:
    """A full two-tower model with its tokenizer and image processor."""
    torch.manual_seed(0)
    vision = dict(**VIT, image_size=32, patch_size=8)
    if family in ("clip", "metaclip_2"):  # MetaCLIP 2: CLIP's architecture, XLM-RoBERTa's tokenizer
        clip = family == "clip"
        tokenizer = (_clip_tokenizer if clip else _xlm_roberta_tokenizer)(folder)
        text = dict(
            TEXT,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        config_class, model_class = (
            (tf.CLIPConfig, tf.CLIPModel) if clip else (tf.MetaClip2Config, tf.MetaClip2Model)
        )
        model = model_class(config_class(text_config=text, vision_config=vision, projection_dim=24))
        processor = _processor_resize_crop(tf.CLIPImageProcessorPil, 32, 32)
    else:  # SigLIP; SigLIP 2 (fixed-resolution: a SigLIP model; NaFlex): Gemma's tokenizer
        tokenizer = (_siglip_tokenizer if family == "siglip" else _gemma_tokenizer)(folder)
        text = dict(
            TEXT,
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if family == "siglip2_naflex":
            model = tf.Siglip2Model(tf.Siglip2Config(text_config=text, vision_config=NAFLEX_VISION))
            processor = tf.Siglip2ImageProcessorPil(patch_size=8, max_num_patches=20)
        else:
            model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
            processor = tf.SiglipImageProcessorPil(size=SQUARE_32)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# OpenCLIP's hub layout (tests/openclip/, in a venv with open_clip_torch): a ViT-B-32-shaped
# config scaled down, CLIP's tokenizer (the package's own vocabulary, no download).
OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


# ViT-B-16-SigLIP's layout as Marqo's and timm's SigLIP checkpoints publish it: a timm image
# tower (attention-pooled), open_clip's own text transformer, a HuggingFace tokenizer whose
# files sit in the folder, a logit bias; shrunk (timm's test ViT: 160 pixels, 64 wide).
OPEN_CLIP_SIGLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {
            "image_size": 160,
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": "none",
        },
        "text_cfg": {
            "context_length": 64,
            "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": 32,
            "heads": 2,
            "layers": 1,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    },
    "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "squash",
    },
}


# MobileCLIP2-S0's layout (Apple's MobileCLIP checkpoints): a timm FastViT image tower (the
# real one: timm has no smaller FastViT), open_clip's text transformer without a causal
# mask (shrunk), CLIP's tokenizer.
OPEN_CLIP_MOBILECLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "custom_text": True,
        "vision_cfg": {
            "timm_model_name": "fastvit_mci0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": None,
            "image_size": 256,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
            "no_causal_mask": True,
        },
    },
    "preprocess_cfg": {
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "interpolation": "bilinear",
        "resize_mode": "shortest",
    },
}


def build_open_clip_timm_model(folder: Path, config: dict) -> Path:
    """A random OpenCLIP model with a timm image tower and open_clip's custom text tower
    (OPEN_CLIP_SIGLIP_CONFIG, OPEN_CLIP_MOBILECLIP_CONFIG) in the hub layout; a config that
    names a Hugging Face tokenizer gets a sentencepiece one saved beside it (open_clip's
    `local-dir:` reads it there)."""
    import json

    import open_clip
    import safetensors.torch

    config = json.loads(json.dumps(config))
    folder.mkdir(parents=True, exist_ok=True)
    if "hf_tokenizer_name" in config["model_cfg"]["text_cfg"]:
        config["model_cfg"]["text_cfg"]["vocab_size"] = len(_siglip_tokenizer(folder))
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model_cfg = {k: v for k, v in config["model_cfg"].items() if k != "custom_text"}
    model = open_clip.CustomTextCLIP(**model_cfg).eval()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    safetensors.torch.save_file(state, folder / "open_clip_model.safetensors")
    return folder


def build_open_clip_model(folder: Path, **preprocess) -> Path:
    """open_clip_config.json and open_clip_model.safetensors of a tiny random CLIP."""
    import json

    import open_clip
    import safetensors.torch

    config = {**OPEN_CLIP_CONFIG, "preprocess_cfg": {**OPEN_CLIP_CONFIG["preprocess_cfg"], **preprocess}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.CLIP(**config["model_cfg"]).eval()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    safetensors.torch.save_file(state, folder / "open_clip_model.safetensors")
    return folder
