"""The models a server serves, by name and version: the one place an unknown model becomes
ModelNotFound; start-up, repository load and unload, the MAX_LOADED_MODELS bound (the
least recently used idle model makes room), MODEL_TTL_S idle unloads and the on-demand
reload that follows them, draining and shutdown. MODEL_ID builds a registry of one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator

from app.errors import BadRequest, ModelNotFound, Overloaded
from app.inference.served_model import DeadlineExceeded, ServedModel

log = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, models: Iterable[ServedModel], max_loaded: int = 0, ttl_s: float = 0):
        self._models: dict[str, ServedModel] = {}
        for model in models:
            if model.name in self._models:
                raise ValueError(f"two models are named {model.name!r}")
            self._models[model.name] = model
        self.max_loaded = max_loaded
        self.ttl_s = ttl_s
        self.started = False  # every start-up model has had its first load
        self._room = asyncio.Lock()  # one eviction decision at a time
        self._expiry: asyncio.Task | None = None

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            served = ", ".join(f"'{n}'" for n in self._models)
            raise ModelNotFound(f"unknown model '{name}'; this server serves {served}")
        model.check_version(version)
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Start-up: begin loading the models configured to load at start-up (within
        MAX_LOADED_MODELS) at once, so that they answer 'loading' from the first request;
        the task ends when each has loaded or failed."""
        if self.ttl_s:
            self._expiry = asyncio.create_task(self._unload_idle())
        startup = [model for model in self if model.load_at_startup]
        if self.max_loaded and len(startup) > self.max_loaded:
            log.warning(
                "MAX_LOADED_MODELS=%d: loading the first %d start-up models only",
                self.max_loaded,
                self.max_loaded,
            )
            for model in startup[self.max_loaded :]:
                model.defer_to_first_request()
            startup = startup[: self.max_loaded]
        loads = [model.start_loading() for model in startup]
        return asyncio.create_task(self._finish_start(loads))

    async def _finish_start(self, loads: list[asyncio.Task]) -> None:
        await asyncio.gather(*loads)
        self.started = True

    async def load(self, name: str) -> ServedModel:
        """A repository load: returns once the model is loaded; 400 when it fails to."""
        model = self.get(name)
        if not model.loaded or model.unloading:  # a load during an unload waits, then loads
            await self._load(model, on_demand=False)
            if not model.loaded:
                raise BadRequest(f"failed to load model '{name}'; see the server log")
        return model

    async def unload(self, name: str) -> None:
        """A repository unload: requests get 503 until a repository load."""
        await self.get(name).unload("unloaded through the repository API", loads_on_demand=False)

    def check_can_serve(self, model: ServedModel) -> None:
        """Before a request's body is read: the 503 now when the model cannot serve it, and
        will not by loading on demand."""
        if not model.loads_on_demand:
            model.require_ready()

    async def acquire(self, model: ServedModel, deadline_s: float | None):
        """The model's backend, ready: a model unloaded when idle or to make room is loaded
        again within the request's deadline; otherwise the 503 that says why not."""
        if model.loads_on_demand:
            load = (
                asyncio.shield(model.start_loading()) if model.loading else self._load(model, on_demand=True)
            )
            try:
                await asyncio.wait_for(load, deadline_s or model.limits.request_timeout_s)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"model '{model.name}' did not load within the request's timeout"
                ) from None
        return model.require_ready()

    async def _load(self, model: ServedModel, on_demand: bool) -> None:
        async with self._room:
            if not model.loading:
                await self._make_room(model)
            loading = model.start_loading(on_demand)
        await asyncio.shield(loading)

    async def _make_room(self, model: ServedModel) -> None:
        if not self.max_loaded:
            return
        while True:
            occupying = [m for m in self if m is not model and (m.loaded or m.loading)]
            if len(occupying) < self.max_loaded:
                return
            idle = [m for m in occupying if m.idle]
            if not idle:
                raise Overloaded(
                    f"MAX_LOADED_MODELS={self.max_loaded} models are loaded and none is idle; "
                    f"model '{model.name}' cannot load now, retry shortly"
                )
            victim = min(idle, key=lambda m: m.last_used)
            await victim.unload(
                f"unloaded to make room for '{model.name}' (MAX_LOADED_MODELS={self.max_loaded}); "
                "its next request loads it again",
                loads_on_demand=True,
            )

    async def _unload_idle(self) -> None:
        """MODEL_TTL_S: unload models that served nothing for that long."""
        while True:
            await asyncio.sleep(min(max(self.ttl_s / 4, 0.05), 5))
            now = time.monotonic()
            for model in self:
                if model.idle and now - model.last_used >= self.ttl_s:
                    try:
                        await model.unload(
                            f"unloaded after {self.ttl_s:g} s idle (MODEL_TTL_S); "
                            "its next request loads it again",
                            loads_on_demand=True,
                        )
                    except Exception:  # noqa: BLE001 - one failed unload must not end the expiry loop
                        log.exception("model '%s': idle unload failed", model.name)

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await asyncio.gather(*(model.close() for model in self))

    def start_draining(self) -> None:
        for model in self:
            model.start_draining()

    def quiet_for(self, seconds: float) -> bool:
        """Draining, nothing in flight, and no request refused for `seconds` (read from the
        shutdown thread: plain attribute reads)."""
        now = time.monotonic()
        return all(
            model.draining
            and model.in_flight == 0
            and model.admitted_inputs == 0
            and now - model.last_refused_draining >= seconds
            for model in self
        )

    # --- health ----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return any(model.draining for model in self)

    @property
    def ready(self) -> bool:
        """Every start-up model serves (or, unloaded when idle or to make room, loads on its
        next request), and every loaded model can take requests: a start-up model unloaded
        through the API makes the server unready, so that balancers stop sending it traffic."""
        if not self.started or self.draining or self.broken:
            return False
        for model in self:
            if model.loaded and not model.ready and not model.loads_on_demand:
                return False  # (an idle unload in progress: its next request loads it again)
            failed_at_start = model.broken  # marked in the index; the others serve
            if (
                model.load_at_startup
                and not model.loaded
                and not failed_at_start
                and not model.loads_on_demand
            ):
                return False
        return True

    @property
    def broken(self) -> bool:
        """Every start-up model failed to load: the server is dead (liveness fails). In a
        repository where others loaded, the failed ones are marked in the index instead,
        and the server serves the rest."""
        startup = [model for model in self if model.load_at_startup]
        return bool(startup) and all(model.broken for model in startup)

    def index(self, ready_only: bool = False) -> list[dict]:
        """The V2 repository index (Triton's shape): every model, its state and why."""
        entries = []
        for model in self:
            state, reason = model.state()
            if ready_only and state != "READY":
                continue
            entries.append({"name": model.name, "version": model.version, "state": state, "reason": reason})
        return entries
