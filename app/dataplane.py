"""The data plane: what every transport (V2 REST, V2 gRPC, the OpenAI route) calls once it
has parsed a request, in the shape of kserve's `dataplane.py`. It owns the model registry
and the request-bytes budget, finds the model (404), loads it on demand or says why it
cannot serve (503), runs the request within its deadline and returns domain results;
errors are the domain errors of app.errors, which each transport maps once to its own
status codes. No HTTP and no gRPC here."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app import __version__
from app.embedding.pooling import PoolingStrategy
from app.errors import BadRequest, Forbidden, Unauthorized
from app.inference.budgets import ByteBudget
from app.inference.registry import ModelRegistry
from app.inference.served_model import ServedModel
from app.protocol.codec import RequestLimits, model_metadata
from app.protocol.spec import EmbedRequestSpec
from app.settings import ModelControlMode, Settings

if TYPE_CHECKING:
    from app.embedding.text_tower import TokenizedTexts

SERVER_NAME = "image-embed-server"
# Only what really works: binary tensor data on REST requests and answers, statistics, and
# the repository index/load/unload.
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]

# Triton's load parameters for a model config or files sent with the call.
UNSUPPORTED_LOAD_PARAMETERS = ("config", "file:")
# A transport's request decoding: it may read and parse its body within these limits.
Decode = Callable[[RequestLimits], Awaitable[EmbedRequestSpec]]


@dataclass
class InferOutcome:
    model_name: str
    model_id: str
    spec: EmbedRequestSpec
    embeddings: np.ndarray  # [N, D] float32
    parameters: dict | None  # the answer's own parameters (texts_truncated)


class DataPlane:
    def __init__(self, settings: Settings, models: ModelRegistry, body_budget: ByteBudget):
        self.settings = settings
        self.models = models
        self.body_budget = body_budget
        # One set of request limits for every model: the budgets are the process's.
        self.limits = RequestLimits.from_settings(settings)

    # --- health and metadata ---------------------------------------------------------------

    @property
    def live(self) -> bool:
        # A start-up model that failed to load is a dead server: let the orchestrator restart it.
        return not self.models.broken

    @property
    def ready(self) -> bool:
        return self.models.ready

    @staticmethod
    def server_metadata() -> dict:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None = None) -> ServedModel:
        return self.models.get(name, version)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.models.get(name, version).ready

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        return model_metadata(self.models.get(name, version).describe())

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict]:
        models = [self.models.get(name, version)] if name else list(self.models)
        return [model.stats.as_dict() for model in models]

    # --- inference -------------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, decode: Decode, deadline_s: float | None = None
    ) -> InferOutcome:
        """A V2 inference: the model is looked up before the request is decoded (an
        unknown or unready model costs no parsing); `deadline_s` is the transport's own deadline (a
        gRPC deadline), the request's `timeout` parameter may shorten it."""
        model = self.models.get(name, version)
        self.check_can_serve(model)
        with model.counting_request():
            spec = await decode(self.limits)
            if spec.timeout_us:
                deadline_s = min(spec.timeout_us / 1e6, deadline_s or float("inf"))
            if spec.texts:
                embeddings, tokenized = await self.embed_texts(
                    model, spec.texts, spec.pooling, spec.normalize, deadline_s
                )
                parameters = {"texts_truncated": tokenized.truncated}
            else:
                embeddings = await self.embed_images(
                    model, spec.images, spec.pooling, spec.normalize, deadline_s
                )
                parameters = None
            return InferOutcome(model.name, model.model_id, spec, embeddings, parameters)

    def check_can_serve(self, model: ServedModel) -> None:
        """Before a request's body is read: 503 now when the model cannot serve it (and will
        not by loading on demand)."""
        self.models.check_can_serve(model)

    async def ready_backend(self, model: ServedModel, deadline_s: float | None = None):
        """The model's runtime backend once it can serve (after an on-demand load)."""
        return await self.models.acquire(model, deadline_s)

    async def embed_images(
        self,
        model: ServedModel,
        images: list,
        pooling: PoolingStrategy | None,
        normalize: bool | None,
        deadline_s: float | None = None,
    ) -> np.ndarray:
        remaining = await self._ready(model, deadline_s)
        return await model.embed(images, pooling, normalize, remaining)

    async def embed_texts(
        self,
        model: ServedModel,
        texts: list[str],
        pooling: PoolingStrategy | None,
        normalize: bool | None,
        deadline_s: float | None = None,
    ) -> tuple[np.ndarray, TokenizedTexts]:
        """Text embeddings, and how the texts were tokenized (truncations, token counts)."""
        remaining = await self._ready(model, deadline_s)
        return await model.embed_texts(texts, pooling, normalize, remaining)

    async def _ready(self, model: ServedModel, deadline_s: float | None) -> float | None:
        """Wait for the model (an on-demand reload counts against the deadline); the rest
        of the deadline."""
        if model.loaded:  # the common case: nothing to wait for
            model.require_ready()
            return deadline_s
        started = time.monotonic()
        await self.models.acquire(model, deadline_s)
        if deadline_s is None:
            return None
        return max(deadline_s - (time.monotonic() - started), 1e-3)

    # --- repository --------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self.models.index(ready_only)

    def authorize_model_control(self, authorization: str | None) -> None:
        """Repository load and unload change what every client is served: refused unless
        MODEL_CONTROL_MODE=explicit, and then, with MODEL_CONTROL_TOKEN, only with
        `Authorization: Bearer <token>`. Checked before the model is looked up, so that a
        refused caller learns nothing about it."""
        if self.settings.model_control_mode != ModelControlMode.EXPLICIT:
            raise Forbidden(
                "model control is disabled on this server: repository load and unload need "
                "MODEL_CONTROL_MODE=explicit (the index stays readable)"
            )
        expected = self.settings.model_control_token
        if expected is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        # Constant-time comparison: the answer's timing must not reveal the token's prefix.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Unauthorized(
                "repository load and unload need 'Authorization: Bearer <MODEL_CONTROL_TOKEN>'"
            )

    async def load(
        self, name: str, parameter_names: Iterable[str] = (), authorization: str | None = None
    ) -> None:
        """A repository load; the load parameters this server cannot honour (a config or
        files sent with the call) are refused rather than silently ignored."""
        self.authorize_model_control(authorization)
        for key in parameter_names:
            if key.startswith(UNSUPPORTED_LOAD_PARAMETERS):
                raise BadRequest(
                    f"load parameter '{key}' is not supported: a model loads from its own folder"
                )
        await self.models.load(name)

    async def unload(self, name: str, authorization: str | None = None) -> None:
        self.authorize_model_control(authorization)
        await self.models.unload(name)
