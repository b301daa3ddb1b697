"""The seams: the serving side (routes, codec, registry, served model, batcher) runs
without importing any runtime; only the backend a model loads brings torch (or OpenVINO) in;
no module of app/ imports, through others, itself."""

from __future__ import annotations

import ast
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
    "app.embedding.selection",
    "app.inference.lifecycle",
    "app.settings",
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
    # The OpenVINO backend's own modules: a cached export serves without torch or transformers.
    "app.embedding.model_source",
    "app.embedding.gpu_presence",
    "app.embedding.openvino_backend",
    "app.embedding.openvino_export",
    "app.embedding.auto_runtime",
    "app.embedding.preflight",
    "app.cache.keys",
]


def test_the_serving_side_imports_no_runtime():
    code = (
        "import importlib, sys\n"
        f"for name in {SERVING_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "runtimes = ('torch', 'transformers', 'openvino', 'nncf')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in runtimes)\n"
        "print(loaded[:5])\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_api_or_batcher_module_names_torch():
    for path in [*(ROOT / "app" / "api").glob("*.py"), ROOT / "app" / "inference" / "batcher.py"]:
        source = path.read_text()
        assert "import torch" not in source and "from torch" not in source, path


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The app modules `path` imports, at the top or inside a function (a deferred import
    is a dependency too), but not for type checking only."""
    found = set()
    tree = ast.parse(path.read_text())
    type_checking = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & modules


def test_no_import_cycle_in_app():
    paths = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "app").rglob("*.py")
    }
    graph = {name: _module_imports(path, set(paths)) - {name} for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
