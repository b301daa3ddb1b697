"""The benchmark models: the real MobileNetV2 (embedded default) and random-weight towers
in the shapes of DINOv2-S/B, DINOv3 ViT-S/16 and ConvNeXt-T, MetaCLIP 2 B/32, SigLIP 2's base
at 224 and NaFlex 256 patches and OpenCLIP's ViT-B-32 (the forward's cost depends on the
shape, not the weights; fidelity between runtimes on random weights says the runtimes agree,
not that the embeddings mean anything)."""

from __future__ import annotations

from pathlib import Path

# ViT-B: DINOv2-base, SigLIP 2 base's and CLIP ViT-B's image towers.
VIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SHAPES = {
    "dinov2-small": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536
    ),
    "dinov2-base": VIT_BASE,
}


def prepare_model(name: str, cache: Path) -> Path:
    """A model folder for `name`: 'mobilenet-v2', a DINOv2 shape, or an existing folder."""
    if name == "mobilenet-v2":
        from app.embedding.default_model import ensure_default_model

        return ensure_default_model(cache)
    if name in SHAPES:
        folder = cache / f"{name}-random"
        if not (folder / "config.json").is_file():
            import torch
            import transformers as tf

            torch.manual_seed(0)
            config = tf.Dinov2Config(**SHAPES[name], image_size=224, patch_size=14)
            tf.Dinov2Model(config).save_pretrained(folder)
            # facebook/dinov2-*'s processor: resize 256 (bicubic), centre crop 224, ImageNet mean/std.
            tf.BitImageProcessorPil(
                size={"shortest_edge": 256},
                crop_size={"height": 224, "width": 224},
                resample=3,
                image_mean=[0.485, 0.456, 0.406],
                image_std=[0.229, 0.224, 0.225],
            ).save_pretrained(folder)
        return folder
    if name in ("dinov3-vits16", "dinov3-convnext-tiny"):
        return _dinov3(name, cache / f"{name}-random")
    if name == "metaclip2-b32":
        return _metaclip2_b32(cache / "metaclip2-b32-random")
    if name == "siglip2-base-224":
        return _siglip2_base(cache / "siglip2-base-224-random")
    if name == "siglip2-base-naflex-256":
        return _siglip2_naflex_base(cache / "siglip2-base-naflex-256-random")
    if name == "open-clip-vit-b-32":  # needs open_clip_torch (.venv-openclip)
        return _open_clip_vit_b32(cache / "open-clip-vit-b-32-random")
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise SystemExit(
            f"unknown model {name!r}: use mobilenet-v2, {', '.join(SHAPES)}, dinov3-vits16, "
            "dinov3-convnext-tiny, metaclip2-b32, siglip2-base-224, siglip2-base-naflex-256, "
            "open-clip-vit-b-32 or a model folder"
        )
    return folder


def _dinov3(name: str, folder: Path) -> Path:
    """facebook/dinov3-vits16-pretrain-lvd1689m (ViT-S/16, 4 registers, RoPE) or
    dinov3-convnext-tiny-pretrain-lvd1689m, with their processor's steps (224x224 bilinear,
    ImageNet mean/std) in the Pillow processor this server loads for DINOv3 folders."""
    if not (folder / "config.json").is_file():
        import torch
        import transformers as tf

        torch.manual_seed(0)
        if name == "dinov3-vits16":
            # Layer scale 1.0, not the checkpoint's initial 1e-5: random blocks scaled
            # by 1e-5 leave every image with nearly the same embedding.
            model = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(num_register_tokens=4, layerscale_value=1.0))
        else:
            model = tf.DINOv3ConvNextModel(tf.DINOv3ConvNextConfig())
        model.save_pretrained(folder)
        tf.BitImageProcessorPil(
            size={"height": 224, "width": 224},
            do_center_crop=False,
            resample=2,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ).save_pretrained(folder)
    return folder


def _metaclip2_b32(folder: Path) -> Path:
    """facebook/metaclip-2-worldwide-b32's image tower with its projection (CLIP's ViT-B/32)
    and CLIP's processor (shortest side 224 bicubic, centre crop 224, OpenAI's mean and std)."""
    if not (folder / "config.json").is_file():
        import torch
        import transformers as tf

        torch.manual_seed(0)
        config = tf.MetaClip2VisionConfig(**VIT_BASE, image_size=224, patch_size=32, projection_dim=512)
        tf.MetaClip2VisionModelWithProjection(config).save_pretrained(folder)
        tf.CLIPImageProcessorPil(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3
        ).save_pretrained(folder)
    return folder


def _siglip2_base(folder: Path) -> Path:
    """google/siglip2-base-patch16-224's image tower (SigLIP's architecture: ViT-B/16 with an
    attention-pooling head) and its processor (224x224 bilinear, mean and std 0.5)."""
    if not (folder / "config.json").is_file():
        import torch
        import transformers as tf

        torch.manual_seed(0)
        config = tf.SiglipVisionConfig(**VIT_BASE, image_size=224, patch_size=16)
        tf.SiglipVisionModel(config).save_pretrained(folder)
        tf.SiglipImageProcessorPil(size={"height": 224, "width": 224}, resample=2).save_pretrained(folder)
    return folder


def _siglip2_naflex_base(folder: Path) -> Path:
    """google/siglip2-base-patch16-naflex's image tower (ViT-B/16, a 16x16 position grid
    resized to each image's patch grid, attention-pooling head) and its processor (at most
    256 patches of 16x16, bilinear, mean and std 0.5)."""
    if not (folder / "config.json").is_file():
        import torch
        import transformers as tf

        torch.manual_seed(0)
        config = tf.Siglip2VisionConfig(**VIT_BASE, patch_size=16, num_patches=256)
        tf.Siglip2VisionModel(config).save_pretrained(folder)
        tf.Siglip2ImageProcessorPil(patch_size=16, max_num_patches=256).save_pretrained(folder)
    return folder


def _open_clip_vit_b32(folder: Path) -> Path:
    """OpenCLIP's ViT-B-32 (LAION's and DFN's most fetched shape) in the hub layout, random
    weights, the package's default preprocessing (224, bicubic, shortest side, OpenAI's
    mean and std)."""
    if not (folder / "open_clip_config.json").is_file():
        import json

        import open_clip
        import safetensors.torch
        import torch

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32").eval()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "model_cfg": open_clip.get_model_config("ViT-B-32"),
            "preprocess_cfg": model.visual.preprocess_cfg,
        }
        (folder / "open_clip_config.json").write_text(json.dumps(config))
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        safetensors.torch.save_file(state, folder / "open_clip_model.safetensors")
    return folder
