"""Tiny random-weight models of every supported family, saved with their image processors
so that the server's own loading code reads them like any downloaded checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
SQUARE_32 = {"height": 32, "width": 32}


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
        "siglip": (
            lambda: tf.SiglipModel(
                tf.SiglipConfig(text_config=TEXT, vision_config=dict(**VIT, image_size=32, patch_size=8))
            ),
            lambda: tf.SiglipImageProcessorPil(size=SQUARE_32),
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
