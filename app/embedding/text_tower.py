"""The text half of a CLIP or SigLIP model: its own tokenizer, as the model was trained,
and `get_text_features` (CLIP: the projected EOS token; SigLIP: its pooled head), so that
text and image embeddings from one server share the model's joint space.

SigLIP texts are always padded to 64: it was trained that way (a shorter padding changes
its embeddings); SigLIP 2's fixed-resolution checkpoints (SigLIP models with Gemma's
tokenizer) are lower-cased too, as they were trained. CLIP's causal mask and attention
mask make padding irrelevant to its result, so CLIP texts are padded only to the next of a
few lengths (16, 32, 48, 77): short queries cost a fifth of a 77-token forward, and texts
of one length bucket from different requests still share a forward pass (the batcher joins
equal shapes only)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Model types whose folders may hold a text tower (MetaCLIP 2's is CLIP's text transformer,
# SigLIP 2 NaFlex's is SigLIP's, with transformers' Siglip2Tokenizer: Gemma's, lower-cased).
TEXT_FAMILIES = ("clip", "metaclip_2", "siglip", "siglip2")
CLIP_LENGTH_BUCKETS = (16, 32, 48)


@dataclass(frozen=True)
class TokenizedTexts:
    tokens: np.ndarray  # int64 [n, 2, max_length]: input ids, attention mask
    truncated: int  # texts longer than max_length, cut to it
    token_counts: list[int]  # tokens of each text, as the model sees it (special tokens included)


class TextTower:
    def __init__(self, model: Any, tokenizer, family: str):
        self.model = model  # the full CLIPModel / SiglipModel (its vision half serves images)
        self.tokenizer = tokenizer
        # A transformers tokenizer is not safe to call from several threads: each call sets
        # the Rust tokenizer's padding and truncation, so a concurrent call could run with
        # another's length (a wrong embedding) or find it borrowed (a RuntimeError).
        self._tokenizer_lock = threading.Lock()
        self.family = family
        self.max_length = int(model.config.text_config.max_position_embeddings)
        # SigLIP is trained without an attention mask (padding tokens are attended to).
        self.use_attention_mask = family == "clip"
        self.logits = model_logits(model)

    def tokenize(self, texts: list[str]) -> TokenizedTexts:
        """Off the model thread (it runs no torch op), from any number of threads: the two
        tokenizer calls of one request run under one lock (64 texts take about a millisecond)."""
        with self._tokenizer_lock:
            # verbose=False: a text over the maximum is expected here (counted, then truncated).
            lengths = [
                len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
            ]
            length = self.max_length
            if self.family == "clip":
                longest = max(lengths, default=0)
                length = next(
                    (b for b in CLIP_LENGTH_BUCKETS if longest <= b < self.max_length), self.max_length
                )
            encoded = self.tokenizer(
                texts, padding="max_length", truncation=True, max_length=length, return_tensors="np"
            )
        tokens = np.stack([encoded["input_ids"], encoded["attention_mask"]], axis=1).astype(np.int64)
        truncated = sum(length > self.max_length for length in lengths)
        return TokenizedTexts(tokens, truncated, [min(n, self.max_length) for n in lengths])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, D] text features (unnormalised) of [n, 2, L] tokens, on the model's device."""
        ids, mask = tokens[:, 0], tokens[:, 1]
        with torch.inference_mode():
            features = self.model.get_text_features(
                input_ids=ids, attention_mask=mask if self.use_attention_mask else None
            )
        return features.pooler_output


def model_logits(model: Any) -> dict[str, float]:
    """What turns the cosine of normalised embeddings into the model's logits: its logit
    scale (exponentiated) and bias (SigLIP: a sigmoid of the logits is the match probability)."""
    logits = {"logit_scale": float(model.logit_scale.detach().exp())}
    if getattr(model, "logit_bias", None) is not None:
        logits["logit_bias"] = float(model.logit_bias.detach())
    return logits


def load_tokenizer(location: str, model_type: str):
    """The folder's tokenizer with its family's text preprocessing, or None when it has
    none (an image-only folder)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, ImportError, TypeError):
        return None
    if model_type == "siglip" and type(tokenizer).__name__.startswith("Gemma"):
        lower_case(tokenizer)
    return tokenizer


def lower_case(tokenizer) -> None:
    """SigLIP 2's fixed-resolution checkpoints are SigLIP models (model_type siglip) whose
    folders name Gemma's tokenizer, and SigLIP 2 was trained on lower-cased text: the same
    Lowercase normalizer transformers' Siglip2Tokenizer puts in front of Gemma's (which has
    none). Special tokens are matched before normalising, as there."""
    from tokenizers import normalizers

    backend = tokenizer.backend_tokenizer
    steps = [normalizers.Lowercase()] + ([backend.normalizer] if backend.normalizer is not None else [])
    backend.normalizer = normalizers.Sequence(steps)
