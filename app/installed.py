"""Whether an optional package is installed, without importing it (the bulk client and
QUANTIZE=int8 name the requirements file to install instead of failing on an import)."""

from __future__ import annotations

import importlib.util


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module entry without a spec: not importable
        return False
