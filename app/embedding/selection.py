"""Which runtime backend runs a model: the one place that imports them (with
auto_runtime.py, which measures them for RUNTIME=auto). A third runtime is a class that fits
`RuntimeBackend` (backend.py) and a branch here; mypy checks the fit through
`load_backend`'s return type."""

from __future__ import annotations

import threading

from app.embedding import auto_runtime
from app.embedding.backend import RuntimeBackend
from app.embedding.preflight import check_model_settings
from app.settings.model import ModelSettings, RuntimeSetting

# One load at a time in a process: transformers imports its model classes lazily, and two
# threads importing at once can find a module half-initialised ("cannot import name
# 'AutoModel'"), which failed one model of a repository loading several at start-up.
_ONE_LOAD_AT_A_TIME = threading.Lock()


def load_backend(settings: ModelSettings) -> RuntimeBackend:
    """The backend the settings ask for, loaded and warmed up. Each runtime is imported
    here, when chosen: the serving side stays importable without either."""
    with _ONE_LOAD_AT_A_TIME:
        check_model_settings(settings)  # a setting that cannot work fails in one line, before loading
        settings = auto_runtime.resolve(settings)  # RUNTIME=auto and OPENVINO_HINT=auto decided
        if settings.runtime == RuntimeSetting.OPENVINO:
            from app.embedding.openvino_backend import OpenVinoBackend

            return OpenVinoBackend.from_settings(settings)
        from app.embedding.torch_backend import TorchBackend

        return TorchBackend.from_settings(settings)
