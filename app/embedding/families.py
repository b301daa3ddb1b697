"""One adapter per model family: which model class to load, which poolings it supports
and how each is computed (docs/models.md, "Pooling, by family"). Chosen by `config.model_type`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    MetaClip2Model,
    MetaClip2VisionConfig,
    MetaClip2VisionModelWithProjection,
    PretrainedConfig,
    PreTrainedModel,
    Siglip2Model,
    Siglip2VisionModel,
    SiglipModel,
    SiglipVisionModel,
)
from transformers.models.clip.modeling_clip import CLIPVisionModelOutput

from app.embedding.model_folder import is_open_clip_folder
from app.embedding.pooling import PoolingStrategy
from app.embedding.text_tower import TextTower

CLS, MEAN, MAX = PoolingStrategy.CLS, PoolingStrategy.MEAN, PoolingStrategy.MAX

log = logging.getLogger(__name__)


class FamilyAdapter:
    """Base: load with AutoModel; subclasses say how to pool."""

    name = "generic"
    supported: tuple[PoolingStrategy, ...] = ()
    default: PoolingStrategy = MEAN

    def __init__(self, config: PretrainedConfig | None = None):
        pass

    def load(self, path: str | Path, config: PretrainedConfig, **kwargs) -> PreTrainedModel:
        model, info = AutoModel.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
        self.check_loading_info(info)
        return model

    def check_loading_info(self, info: dict) -> None:
        """Warn about weights the checkpoint lacked (they were initialised at random)."""
        missing = list(info.get("missing_keys", ()))
        if missing:
            log.warning("checkpoint lacks %d weights, initialised at random: %s", len(missing), missing[:5])

    def pool(self, outputs, strategy: PoolingStrategy) -> torch.Tensor:
        raise NotImplementedError

    def load_with_text(self, path, config, tokenizer, **kwargs):
        """(image module, TextTower) from one load of a full two-tower model."""
        raise ValueError(f"{self.name} models have no text tower")


class Dinov2Adapter(FamilyAdapter):
    """CLS = layer-normed [:, 0] (= pooler_output); mean/max over patch tokens only."""

    name = "dinov2"
    supported = (CLS, MEAN, MAX)
    default = CLS

    def __init__(self, config: PretrainedConfig):
        # Register tokens sit between CLS and the patches and never enter mean/max.
        self.first_patch = 1 + int(getattr(config, "num_register_tokens", 0) or 0)

    def pool(self, outputs, strategy):
        hidden = outputs.last_hidden_state
        if strategy == CLS:
            return hidden[:, 0]
        patches = hidden[:, self.first_patch :]
        return patches.mean(dim=1) if strategy == MEAN else patches.amax(dim=1)


class Dinov3Adapter(Dinov2Adapter):
    """DINOv3: the ViT has DINOv2's layout (CLS, registers, patches; pooler_output is the
    layer-normed CLS); the ConvNeXt puts its layer-normed average-pooled feature first (its
    pooler_output) and the layer-normed positions after it, with no registers. Either way:
    CLS = token 0, mean and max over the patch tokens only."""

    name = "dinov3"


class VitAdapter(Dinov2Adapter):
    """ViT: layer-normed CLS token; the pooler is never used (classification checkpoints
    have no pooler weights, so it would be random)."""

    name = "vit"

    def __init__(self, config: PretrainedConfig):
        self.first_patch = 1

    def load(self, path, config, **kwargs):
        return super().load(path, config, add_pooling_layer=False, **kwargs)


class ClipAdapter(FamilyAdapter):
    """The vision tower with its projection: image_embeds, the space the text tower shares.
    MetaCLIP 2 is CLIP's architecture under its own classes (and a multilingual tokenizer)."""

    name = "clip"
    supported = (CLS,)
    default = CLS
    # The family's full model type: its vision config, vision tower with projection, full model.
    classes = {
        "clip": (CLIPVisionConfig, CLIPVisionModelWithProjection, CLIPModel),
        "metaclip_2": (MetaClip2VisionConfig, MetaClip2VisionModelWithProjection, MetaClip2Model),
    }

    def __init__(self, config: PretrainedConfig):
        self.family = config.model_type.removesuffix("_vision_model")
        self.name = self.family

    def load(self, path, config, **kwargs):
        vision_config_class, vision_class, _ = self.classes[self.family]
        if config.model_type == self.family:
            # A full two-tower folder: the vision config does not carry the checkpoint's
            # projection size (it defaults to 512), the top-level config does.
            vision_config = vision_config_class(**config.vision_config.to_dict())
            vision_config.projection_dim = config.projection_dim
        else:
            vision_config = config
        model, info = vision_class.from_pretrained(
            path, config=vision_config, output_loading_info=True, **kwargs
        )
        self.check_loading_info(info)
        return model

    def load_with_text(self, path, config, tokenizer, **kwargs):
        full = self.classes[self.family][2].from_pretrained(path, config=config, **kwargs)
        # The text tower is CLIP's in both (causal, EOS-pooled): it is padded and masked alike.
        return _ClipImages(full), TextTower(full, tokenizer, "clip")

    def check_loading_info(self, info):
        # Without the projection, image_embeds would be random: refuse rather than serve them.
        missing = [k for k in info.get("missing_keys", ()) if "visual_projection" in k]
        if missing:
            raise ValueError(
                "CLIP checkpoint has no visual_projection weights (a CLIPVisionModel without "
                "projection): its image_embeds would be random"
            )

    def pool(self, outputs, strategy):
        return outputs.image_embeds


class SiglipAdapter(FamilyAdapter):
    """CLS = the attention-pooling head (pooler_output); there is no CLS token."""

    name = "siglip"
    supported: tuple[PoolingStrategy, ...] = (CLS, MEAN, MAX)
    default = CLS

    def __init__(self, config: PretrainedConfig):
        vision = getattr(config, "vision_config", config)
        if not getattr(vision, "vision_use_head", True):
            self.supported = (MEAN, MAX)
            self.default = MEAN

    def load(self, path, config, **kwargs):
        vision_config = config.vision_config if config.model_type == "siglip" else config
        return SiglipVisionModel.from_pretrained(path, config=vision_config, **kwargs)

    def load_with_text(self, path, config, tokenizer, **kwargs):
        full = SiglipModel.from_pretrained(path, config=config, **kwargs)
        return _SiglipImages(full), TextTower(full, tokenizer, "siglip")

    def pool(self, outputs, strategy):
        if strategy == CLS:
            return outputs.pooler_output
        hidden = outputs.last_hidden_state
        return hidden.mean(dim=1) if strategy == MEAN else hidden.amax(dim=1)


@dataclass
class NaflexOutput:
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None
    attention_mask: torch.Tensor  # [n, patches]: 1 for an image's own patches


class NaflexImages(torch.nn.Module):
    """A SigLIP 2 vision tower (Siglip2VisionModel) that takes the packed layout as its
    `pixel_values`, so both runtimes call it like any image model. Unpacking is tensor
    arithmetic only: the OpenVINO graph traced through it keeps the patch axis dynamic."""

    def __init__(self, vision: torch.nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor) -> NaflexOutput:
        # An all-zero row (batch padding, warm-up) reads as a grid of one patch.
        grid = pixel_values[:, 0, :2].round().long().clamp(min=1)
        patches = pixel_values[:, 1:]
        positions = torch.arange(patches.shape[1], device=patches.device)
        # int32, as the processor makes it.
        mask = (positions[None, :] < (grid[:, 0] * grid[:, 1])[:, None]).to(torch.int32)
        out = self.vision(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=grid)
        return NaflexOutput(out.last_hidden_state, out.pooler_output, mask)


class Siglip2NaflexAdapter(SiglipAdapter):
    """SigLIP 2 NaFlex: SigLIP's rules over each image's own patches (app/embedding/naflex.py).
    CLS = the attention-pooling head, which the mask keeps to the image's patches; mean and
    max skip the padding that a batch of other shapes adds."""

    name = "siglip2"

    def load(self, path, config, **kwargs):
        vision_config = config.vision_config if config.model_type == "siglip2" else config
        return NaflexImages(Siglip2VisionModel.from_pretrained(path, config=vision_config, **kwargs))

    def load_with_text(self, path, config, tokenizer, **kwargs):
        full = Siglip2Model.from_pretrained(path, config=config, **kwargs)
        # The text tower is SigLIP's: padded to 64, unmasked, its pooled head.
        return NaflexImages(full.vision_model), TextTower(full, tokenizer, "siglip")

    def pool(self, outputs: NaflexOutput, strategy):
        if strategy == CLS:
            return outputs.pooler_output
        hidden = outputs.last_hidden_state
        own = outputs.attention_mask.bool()[..., None]
        if strategy == MEAN:
            return (hidden * own).sum(dim=1) / own.sum(dim=1)
        return hidden.masked_fill(~own, float("-inf")).amax(dim=1)


class _ClipImages(torch.nn.Module):
    """A full CLIPModel's image side, answering like CLIPVisionModelWithProjection."""

    def __init__(self, full: CLIPModel | MetaClip2Model):
        super().__init__()
        self.full = full

    def forward(self, pixel_values):
        out = self.full.get_image_features(pixel_values=pixel_values)
        return CLIPVisionModelOutput(image_embeds=out.pooler_output, last_hidden_state=out.last_hidden_state)


class _SiglipImages(torch.nn.Module):
    """A full SiglipModel's image side, answering like SiglipVisionModel."""

    def __init__(self, full: SiglipModel):
        super().__init__()
        self.full = full

    def forward(self, pixel_values):
        return self.full.get_image_features(pixel_values=pixel_values)


class TokenAdapter(FamilyAdapter):
    """Token sequences without a CLS token (Swin, SwinV2, unknown transformers)."""

    name = "tokens"
    supported = (MEAN, MAX)
    default = MEAN

    def pool(self, outputs, strategy):
        hidden = outputs.last_hidden_state
        return hidden.mean(dim=1) if strategy == MEAN else hidden.amax(dim=1)


class FeatureMapAdapter(FamilyAdapter):
    """CNNs: last_hidden_state is NCHW; mean is the model's own pooled output."""

    name = "feature_map"
    supported = (MEAN, MAX)
    default = MEAN

    def pool(self, outputs, strategy):
        hidden = outputs.last_hidden_state
        if strategy == MAX:
            return hidden.amax(dim=(2, 3))
        pooled = getattr(outputs, "pooler_output", None)
        batch, channels = hidden.shape[:2]
        if pooled is not None and pooled.numel() == batch * channels:
            # ConvNeXt layer-norms its pooled output; others average: use what the model made.
            return pooled.reshape(batch, channels)
        return hidden.mean(dim=(2, 3))


_BY_MODEL_TYPE = {
    "dinov2": Dinov2Adapter,
    "dinov2_with_registers": Dinov2Adapter,
    "dinov3_vit": Dinov3Adapter,
    "dinov3_convnext": Dinov3Adapter,
    "vit": VitAdapter,
    "clip": ClipAdapter,
    "clip_vision_model": ClipAdapter,
    "metaclip_2": ClipAdapter,
    "metaclip_2_vision_model": ClipAdapter,
    "siglip": SiglipAdapter,
    "siglip_vision_model": SiglipAdapter,
    "siglip2": Siglip2NaflexAdapter,
    "siglip2_vision_model": Siglip2NaflexAdapter,
    "swin": TokenAdapter,
    "swinv2": TokenAdapter,
    "convnext": FeatureMapAdapter,
    "convnextv2": FeatureMapAdapter,
    "mobilenet_v2": FeatureMapAdapter,
}


# Families whose forward is convolutional: channels_last memory layout helps them.
CONVOLUTIONAL_MODEL_TYPES = frozenset(
    name for name, adapter in _BY_MODEL_TYPE.items() if adapter is FeatureMapAdapter
) | {"resnet", "regnet", "efficientnet", "mobilenet_v1", "dinov3_convnext"}


def adapter_for(config: PretrainedConfig) -> FamilyAdapter | None:
    """The family's adapter, or None for a model whose family is only known after a forward."""
    cls = _BY_MODEL_TYPE.get(config.model_type)
    return cls(config) if cls is not None else None


class OpenClipAdapter(FamilyAdapter):
    """The projected image embedding (encode_image): the space the text tower shares."""

    name = "open_clip"
    supported = (CLS,)
    default = CLS

    def pool(self, outputs, strategy):
        return outputs.image_embeds


def folder_adapter(folder: Path, trust_remote_code: bool = False) -> FamilyAdapter | None:
    """adapter_for the model in `folder` (an OpenCLIP checkpoint's included), without loading it."""
    if is_open_clip_folder(folder):
        return OpenClipAdapter()
    return adapter_for(AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code))


def generic_adapter(hidden: torch.Tensor) -> FamilyAdapter:
    """The generic rule for other AutoModel vision encoders, from last_hidden_state's rank."""
    if hidden.ndim == 4:
        return FeatureMapAdapter()
    if hidden.ndim == 3:
        return TokenAdapter()
    raise ValueError(f"cannot pool a last_hidden_state of shape {tuple(hidden.shape)}")
