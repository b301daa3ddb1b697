"""A model family defined by code in its own folder (config.json's auto_map, as some hub
models ship): refused, saying why and which setting runs it, unless TRUST_REMOTE_CODE=true."""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers as tf

from app.embedding.preflight import StartupError
from app.embedding.selection import load_backend
from app.settings import Settings
from tests.support import photo

CONFIGURATION = """
from transformers import PretrainedConfig


class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny_remote_encoder"

    def __init__(self, channels=8, **kwargs):
        self.channels = channels
        super().__init__(**kwargs)
"""

MODELING = """
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteEncoder(PreTrainedModel):
    config_class = TinyRemoteConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.conv = torch.nn.Conv2d(3, config.channels, 4, stride=4)
        self.post_init()

    def forward(self, pixel_values, **kwargs):
        hidden = self.conv(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=hidden.mean(dim=(2, 3)))
"""


@pytest.fixture(scope="module")
def remote_code_folder(tmp_path_factory):
    source = tmp_path_factory.mktemp("code")
    package = source / "tiny_remote"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "configuration_tiny_remote.py").write_text(textwrap.dedent(CONFIGURATION))
    (package / "modeling_tiny_remote.py").write_text(textwrap.dedent(MODELING))
    sys.path.insert(0, str(source))
    try:
        modeling = importlib.import_module("tiny_remote.modeling_tiny_remote")
        modeling.TinyRemoteConfig.register_for_auto_class()
        modeling.TinyRemoteEncoder.register_for_auto_class("AutoModel")
        torch.manual_seed(0)
        model = modeling.TinyRemoteEncoder(modeling.TinyRemoteConfig())
        folder = tmp_path_factory.mktemp("remote-model")
        model.save_pretrained(folder)  # writes auto_map and copies the two code files
    finally:
        sys.path.remove(str(source))
    tf.ConvNextImageProcessorPil(size={"shortest_edge": 32}).save_pretrained(folder)
    return folder


def _settings(folder, tmp_path, **overrides) -> Settings:
    return Settings(
        model_id=str(folder), model_dir=tmp_path / "none", device="cpu", runtime="torch", **overrides
    )


def test_remote_code_is_refused_by_default_with_the_way_forward(remote_code_folder, tmp_path):
    assert "auto_map" in (remote_code_folder / "config.json").read_text()
    with pytest.raises(StartupError, match=r"TRUST_REMOTE_CODE=true: set it only for a folder you trust"):
        load_backend(_settings(remote_code_folder, tmp_path))


def test_with_trust_remote_code_the_folders_own_model_serves(remote_code_folder, tmp_path):
    backend = load_backend(_settings(remote_code_folder, tmp_path, trust_remote_code=True))
    assert backend.model_type == "tiny_remote_encoder"
    images = [photo("chelsea"), photo("coffee")]
    rows, _ = backend.embed(images, backend.default_pooling, normalize=False)
    model = tf.AutoModel.from_pretrained(remote_code_folder, trust_remote_code=True).eval()
    processor = tf.AutoImageProcessor.from_pretrained(remote_code_folder)
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected = model(pixel_values=pixels).pooler_output  # the generic CNN rule: its pooled output
    np.testing.assert_allclose(rows, expected.numpy(), rtol=1e-3, atol=1e-4)
