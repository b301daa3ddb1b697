"""The seams: the serving side (routes, codec, registry, served model, batcher) runs
without importing any runtime; only the backend a model loads brings torch (or OpenVINO) in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVING_MODULES = [
    "app.server",
    "app.api.models",
    "app.api.health",
    "app.api.body",
    "app.protocol.codec",
    "app.inference.registry",
    "app.inference.served_model",
    "app.inference.batcher",
    "app.inference.preparation",
    "app.embedding.backend",
    "app.embedding.preprocess",
    "app.client",
    "app.embedding.fidelity",
    "app.embedding.quantization",
    "app.quantize",
    "app.dataplane",
    "app.api.repository",
    "app.api.openai",
    "app.inference.model_configs",
    "app.grpc_api.server",
    "app.grpc_api.servicer",
    "app.grpc_api.codec",
]


def test_the_serving_side_imports_no_runtime():
    code = (
        "import importlib, sys\n"
        f"for name in {SERVING_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'openvino', 'nncf'))\n"
        "print(loaded[:5])\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_api_or_batcher_module_names_torch():
    for path in [*(ROOT / "app" / "api").glob("*.py"), ROOT / "app" / "inference" / "batcher.py"]:
        source = path.read_text()
        assert "import torch" not in source and "from torch" not in source, path
