"""The data plane: what every transport (V2 REST, V2 gRPC, the OpenAI route) calls once it
has parsed a request, one entry per operation (`infer`, `embed`, `load`, ...), in the shape
of kserve's `dataplane.py`. It owns the model registry and the request-bytes budget, finds
the model (404), loads it on demand or says why it cannot serve (503), runs the request
within its deadline and returns domain results; errors are the domain errors of
app.errors, which each transport maps once to its own status codes. No HTTP and no gRPC
here."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import numpy as np

from app import __version__
from app.embedding.backend import IMAGE, TEXT
from app.errors import BadRequest, Forbidden, InvalidField, PayloadTooLarge, Unauthorized
from app.images.sources import is_image_source
from app.inference.budgets import ByteBudget
from app.inference.registry import ModelRegistry
from app.inference.served_model import ServedModel
from app.protocol.codec import RequestLimits, model_metadata
from app.protocol.spec import EmbedRequestSpec, check_text_length
from app.settings.server import ModelControlMode, ServerSettings

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


@dataclass
class EmbedOutcome:
    model_name: str
    embeddings: np.ndarray  # [N, D] float32
    input_tokens: int  # the tokens of the texts embedded (0 for images)


class DataPlane:
    def __init__(self, settings: ServerSettings, models: ModelRegistry, body_budget: ByteBudget):
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
        self.models.check_can_serve(model)  # 503 now, before the body is read
        with model.counting_request():
            spec = await decode(self.limits)
            if spec.timeout_us:
                deadline_s = min(spec.timeout_us / 1e6, deadline_s or float("inf"))
            remaining = await self._ready(model, deadline_s)
            if spec.texts:
                embeddings, tokenized = await model.embed_texts(
                    spec.texts, spec.pooling, spec.normalize, remaining, spec.cache
                )
                parameters = {"texts_truncated": tokenized.truncated}
            else:
                embeddings = await model.embed(
                    spec.images, spec.pooling, spec.normalize, remaining, spec.cache
                )
                parameters = None
            return InferOutcome(model.name, model.model_id, spec, embeddings, parameters)

    async def embed(
        self,
        name: str,
        inputs: list[str],
        modality: str | None = None,
        dimensions: int | None = None,
        cache: bool = True,
    ) -> EmbedOutcome:
        """An embeddings API call (OpenAI's): texts, or images as URLs, data URIs or base64,
        each with the model's own pooling, L2-normalised. `modality` defaults to text for a
        model with a text tower, else image; `dimensions` must be the model's own size."""
        model = self.models.get(name)
        self.models.check_can_serve(model)  # 503 now, before the body is read
        with model.counting_request():
            await self._ready(model, None)
            backend = model.require_ready()
            chosen = modality or (TEXT if TEXT in backend.modalities else IMAGE)
            if modality is None and chosen == IMAGE and not all(map(is_image_source, inputs)):
                backend.check_text()  # input that is not an image is text: say this model has no text tower
            self._check_inputs(inputs, chosen)
            if dimensions is not None and dimensions != backend.embedding_dim:
                raise InvalidField(
                    f"model '{model.name}' gives {backend.embedding_dim}-dimensional embeddings and cannot "
                    f"shorten them: omit dimensions or send {backend.embedding_dim}",
                    "dimensions",
                )
            if chosen == TEXT:
                vectors, tokenized = await model.embed_texts(inputs, None, normalize=True, cache=cache)
                return EmbedOutcome(model.name, vectors, sum(tokenized.token_counts))
            vectors = await model.embed(inputs, None, normalize=True, cache=cache)
            return EmbedOutcome(model.name, vectors, 0)

    def _check_inputs(self, inputs: list[str], modality: str) -> None:
        if not inputs:
            raise InvalidField("input is empty: send a string or a non-empty list of strings", "input")
        sizes = self.limits.sizes
        limit = sizes.max_texts if modality == TEXT else sizes.max_images
        if len(inputs) > limit:
            what = "texts (MAX_TEXTS_PER_REQUEST)" if modality == TEXT else "images (MAX_IMAGES_PER_REQUEST)"
            raise PayloadTooLarge(f"input has {len(inputs)} items, over the limit of {limit} {what}")
        if modality == TEXT:
            for index, text in enumerate(inputs):
                check_text_length(text, sizes.max_text_chars, f"input[{index}]")

    async def _ready(self, model: ServedModel, deadline_s: float | None) -> float | None:
        """Wait for the model (an on-demand reload counts against the deadline); the rest
        of the deadline."""
        if model.loaded and not model.loads_on_demand:  # the common case: nothing to wait for
            model.require_ready()
            return deadline_s
        started = time.monotonic()
        with model.waiting_for_load():
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
