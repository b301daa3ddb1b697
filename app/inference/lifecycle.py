"""A served model's lifecycle: one phase and the reason for it, every transition in this
module. ServedModel drives it (its loads and unloads); the registry and the data plane
only read it.

    UNLOADED --begin_load--> LOADING --loaded--> READY --begin_unload--> UNLOADING
       ^  ^                     |                  ^                         |
       |  +------- failed -------+ (FAILED)         +-- unload_failed --------+
       +---------------------------------- unloaded ------------------------+

A start-up model is LOADING from the server's first moment (its load begins with the
registry's start, or is deferred to its first request). FAILED is left by a new load only.
Draining (SIGTERM) is not a phase: it overlays any of them and is never undone."""

from __future__ import annotations

import enum
from dataclasses import dataclass

NOT_LOADED_YET = "not loaded yet"


class Phase(enum.Enum):
    UNLOADED = "unloaded"  # never loaded, or unloaded: `reason` says why
    LOADING = "loading"
    READY = "ready"  # loaded: serving, unless draining or its worker is restarting
    UNLOADING = "unloading"  # refusing new requests, finishing admitted ones, then freeing
    FAILED = "failed"  # the last load failed: `reason` is the error's first line


_NEXT: dict[Phase, frozenset[Phase]] = {
    # UNLOADED -> UNLOADED: a later unload's reason replaces the first (an API unload after
    # an idle one), or a start-up model is deferred to its first request.
    Phase.UNLOADED: frozenset({Phase.LOADING, Phase.UNLOADED}),
    # LOADING -> LOADING or UNLOADED: a start-up model's load begins, or is deferred.
    Phase.LOADING: frozenset({Phase.READY, Phase.FAILED, Phase.LOADING, Phase.UNLOADED}),
    Phase.READY: frozenset({Phase.UNLOADING}),
    Phase.UNLOADING: frozenset({Phase.UNLOADED, Phase.READY}),
    Phase.FAILED: frozenset({Phase.LOADING}),
}


class IllegalTransition(RuntimeError):
    """A bug: the model was asked to move where its lifecycle does not go."""


@dataclass
class Lifecycle:
    """`on_demand`: in UNLOADED, whether a request may load the model by itself (unloaded
    when idle or to make room) or must wait for a repository load; in UNLOADING, which of
    the two the unload ends in (a request that meets an idle unload waits for it, then
    loads, instead of getting 503); in LOADING, whether a request started this load
    (requests then wait for it instead of getting 503)."""

    load_at_startup: bool
    phase: Phase = Phase.UNLOADED
    reason: str = NOT_LOADED_YET
    on_demand: bool = False
    settings_error: str | None = None  # FAILED because a setting cannot work: the index says which
    failed_at_startup: bool = False  # the start-up load failed: broken until a load succeeds
    draining: bool = False
    loads: int = 0

    def __post_init__(self) -> None:
        self.on_demand = not self.load_at_startup
        if self.load_at_startup:
            self.phase, self.reason = Phase.LOADING, "loading"

    def _move(self, phase: Phase, reason: str) -> None:
        if phase not in _NEXT[self.phase]:
            raise IllegalTransition(f"{self.phase.value} -> {phase.value}")
        self.phase, self.reason = phase, reason

    # --- transitions -------------------------------------------------------------------------

    def begin_load(self, on_demand: bool) -> None:
        if self.phase is Phase.LOADING and not self.start_up_pending:
            raise IllegalTransition("a load is in progress already")
        self._move(Phase.LOADING, "loading")
        self.on_demand = on_demand
        self.loads += 1

    def loaded(self) -> None:
        self._move(Phase.READY, "")
        self.settings_error = None
        self.failed_at_startup = False

    def failed(self, error: str, settings_error: str | None = None) -> None:
        self._move(Phase.FAILED, error)
        self.settings_error = settings_error
        if self.load_at_startup and self.loads == 1:
            self.failed_at_startup = True

    def begin_unload(self, on_demand: bool) -> None:
        self._move(Phase.UNLOADING, "unloading")
        self.on_demand = on_demand

    def unload_failed(self) -> None:
        self._move(Phase.READY, "")

    def unloaded(self, reason: str, on_demand: bool) -> None:
        self._move(Phase.UNLOADED, reason)
        self.on_demand = on_demand

    def defer_to_first_request(self) -> None:
        """A start-up model over MAX_LOADED_MODELS: its first request loads it."""
        if not self.start_up_pending:
            raise IllegalTransition("only a start-up load that has not begun can be deferred")
        self.load_at_startup = False
        self.unloaded(NOT_LOADED_YET, on_demand=True)

    def start_draining(self) -> None:
        self.draining = True

    # --- questions ---------------------------------------------------------------------------

    @property
    def start_up_pending(self) -> bool:
        """A start-up model whose load has not begun yet."""
        return self.phase is Phase.LOADING and self.loads == 0

    @property
    def may_begin_load(self) -> bool:
        return self.phase in (Phase.UNLOADED, Phase.FAILED) or self.start_up_pending

    @property
    def loading(self) -> bool:
        return self.phase is Phase.LOADING

    @property
    def loaded_now(self) -> bool:
        """The model's weights are in memory (serving, or finishing requests to unload)."""
        return self.phase in (Phase.READY, Phase.UNLOADING)

    @property
    def loads_on_demand(self) -> bool:
        """A request may wait for this model to load (unloaded, or being unloaded, when idle
        or to make room; or a load in progress that a request started), rather than get 503."""
        return self.phase in (Phase.UNLOADED, Phase.UNLOADING, Phase.LOADING) and self.on_demand

    @property
    def load_error(self) -> str | None:
        return self.reason if self.phase is Phase.FAILED else None

    @property
    def broken(self) -> bool:
        """Its start-up load failed and no load has succeeded since."""
        return self.failed_at_startup and not self.loaded_now

    def triton_state(self) -> tuple[str, str]:
        """The repository index's state and reason, in Triton's names."""
        if self.phase is Phase.LOADING:
            return "LOADING", "loading"
        if self.phase is Phase.UNLOADING:
            return "UNLOADING", "unloading"
        if self.phase is Phase.READY:
            return "READY", ""
        if self.phase is Phase.FAILED:
            if self.settings_error:
                return "UNAVAILABLE", f"failed to load: {self.settings_error}"
            return "UNAVAILABLE", "failed to load; see the server log"
        return "UNAVAILABLE", self.reason
