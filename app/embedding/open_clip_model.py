"""OpenCLIP checkpoints in the hub layout (`open_clip_config.json` beside
`open_clip_model.safetensors`, as LAION, DFN, MobileCLIP and Marqo publish them), served
from a local folder through the `open_clip_torch` package (requirements-openclip.txt; it
needs torchvision): image and text towers as the package builds them, its tokenizer, and its
image preprocessing (open_clip_preprocess.py).

The image embedding is `encode_image` (the projected embedding its text tower shares); the
text embedding is `encode_text`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig
from transformers.models.clip.modeling_clip import CLIPVisionModelOutput

from app.embedding.families import OpenClipAdapter
from app.embedding.open_clip_preprocess import OpenClipProcessor
from app.embedding.preflight import import_open_clip
from app.embedding.text_tower import TextTower, TokenizedTexts, model_logits

MODEL_TYPE = OpenClipAdapter.name


class OpenClipConfig(PretrainedConfig):
    """Stands for the transformers config an OpenCLIP folder does not have: its model type."""

    model_type = MODEL_TYPE


class OpenClipImages(torch.nn.Module):
    """An open_clip model's image side, answering like CLIPVisionModelWithProjection."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return CLIPVisionModelOutput(image_embeds=self.model.encode_image(pixel_values))


class OpenClipTextTower(TextTower):
    """encode_text over the package's tokenizer (padded to its context length with 0, cut
    there keeping the end-of-text token, as it was trained)."""

    def __init__(self, model: Any, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self.family = MODEL_TYPE
        self.max_length = int(tokenizer.context_length)
        self.use_attention_mask = False  # encode_text takes token ids only
        self.logits = model_logits(model)

    def tokenize(self, texts: list[str]) -> TokenizedTexts:
        with self._tokenizer_lock:
            ids = self.tokenizer(texts).numpy().astype(np.int64)
            lengths = self._lengths(texts, ids)
        tokens = np.stack([ids, (ids != 0).astype(np.int64)], axis=1)
        truncated = sum(length > self.max_length for length in lengths)
        return TokenizedTexts(tokens, truncated, [min(n, self.max_length) for n in lengths])

    def _lengths(self, texts: list[str], ids: np.ndarray) -> list[int]:
        """Each text's tokens before the cut, special tokens included."""
        if hasattr(self.tokenizer, "encode"):  # the CLIP tokenizer: its start and end tokens added
            return [len(self.tokenizer.encode(text)) + 2 for text in texts]
        if hasattr(self.tokenizer, "clean_fn"):  # a HuggingFace tokenizer (SigLIP's): uncut, unpadded
            cleaned = [self.tokenizer.clean_fn(text) for text in texts]
            return [len(row) for row in self.tokenizer.tokenizer(cleaned)["input_ids"]]
        return [int(n) for n in (ids != 0).sum(axis=1)]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.encode_text(tokens[:, 0])


def load(folder: Path, device: torch.device, dtype: torch.dtype):
    """(image module, OpenClipProcessor, OpenClipTextTower) from the folder."""
    open_clip = import_open_clip()
    location = f"local-dir:{folder}"
    model = open_clip.create_model(location, device=device)
    model = model.to(dtype).eval()
    tokenizer = open_clip.get_tokenizer(location)
    processor = OpenClipProcessor.from_dict(model.visual.preprocess_cfg)
    return OpenClipImages(model), processor, OpenClipTextTower(model, tokenizer)
