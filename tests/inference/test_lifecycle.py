"""The model lifecycle, driven directly: `Lifecycle` alone, then `ServedModel`,
`ModelRegistry` and `DataPlane` with a fake runtime backend passed as `loader=` (the
process tests in tests/api and tests/grpc_api drive the same code through a server)."""

from __future__ import annotations

import asyncio
import base64
import threading

import numpy as np
import pytest

from app.dataplane import DataPlane
from app.embedding.backend import IMAGE, ExecutionTiming, PoolRequest, split_rows
from app.embedding.pooling import PoolingStrategy
from app.embedding.preflight import StartupError
from app.errors import BadRequest, Forbidden, InvalidField, Overloaded, ServiceUnavailable
from app.images.fetch import ImageFetcher
from app.inference.budgets import ByteBudget
from app.inference.lifecycle import IllegalTransition, Lifecycle, Phase
from app.inference.preparation import ImagePreparer
from app.inference.registry import ModelRegistry
from app.inference.served_model import ServedModel, ServingLimits
from app.protocol.spec import EmbedRequestSpec
from app.settings.model import ModelSettings
from app.settings.server import ServerSettings
from tests.support import encode, photo

# --- Lifecycle alone ---------------------------------------------------------------------


def test_a_start_up_model_is_loading_from_the_first_moment_and_a_deferred_one_waits():
    startup, deferred = Lifecycle(load_at_startup=True), Lifecycle(load_at_startup=False)
    assert startup.triton_state() == ("LOADING", "loading") and not startup.loads_on_demand
    assert deferred.triton_state() == ("UNAVAILABLE", "not loaded yet") and deferred.loads_on_demand
    startup.defer_to_first_request()
    assert startup.triton_state() == ("UNAVAILABLE", "not loaded yet") and startup.loads_on_demand


def test_transitions_outside_the_diagram_are_refused():
    life = Lifecycle(load_at_startup=False)
    for wrong in (life.loaded, lambda: life.begin_unload(on_demand=False), life.unload_failed):
        with pytest.raises(IllegalTransition):
            wrong()
    life.begin_load(on_demand=True)
    with pytest.raises(IllegalTransition):
        life.begin_load(on_demand=False)  # one load at a time
    with pytest.raises(IllegalTransition):
        life.defer_to_first_request()  # only a start-up load that has not begun
    life.loaded()
    with pytest.raises(IllegalTransition):
        life.unloaded("why", on_demand=True)  # READY goes through UNLOADING
    assert life.phase is Phase.READY


def test_a_failed_start_up_load_is_broken_until_a_load_succeeds():
    life = Lifecycle(load_at_startup=True)
    life.begin_load(on_demand=False)
    life.failed("OSError: no config.json")
    assert life.broken and life.load_error == "OSError: no config.json"
    assert life.triton_state() == ("UNAVAILABLE", "failed to load; see the server log")
    life.begin_load(on_demand=False)
    life.failed("ValueError: again", settings_error="POOLING_STRATEGY=mean is not supported")
    assert life.triton_state() == ("UNAVAILABLE", "failed to load: POOLING_STRATEGY=mean is not supported")
    life.begin_load(on_demand=False)
    life.loaded()
    assert not life.broken and life.load_error is None and life.triton_state() == ("READY", "")
    life.begin_unload(on_demand=False)
    life.unloaded("unloaded through the repository API", on_demand=False)
    assert not life.broken  # it loaded once: unloaded now, not dead


def test_a_later_failure_is_not_a_start_up_failure():
    life = Lifecycle(load_at_startup=False)
    life.begin_load(on_demand=True)
    life.failed("RuntimeError: out of memory")
    assert not life.broken and not life.loads_on_demand  # a failed model waits for a repository load


# --- a fake runtime backend ----------------------------------------------------------------


class FakePreprocessor:
    fast = True
    draft_min_side = None

    def __call__(self, image):
        return np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32).transpose(2, 0, 1) / 255

    @staticmethod
    def batch_inputs(stacked):
        return stacked


class FakeBackend:
    """Fits RuntimeBackend: a 3-d embedding per image (its mean colour)."""

    model_type = "fake"
    embedding_dim = 3
    max_batch_size = 8
    modalities = (IMAGE,)
    text_logits: dict[str, float] = {}
    concurrent_batches = 1
    supported_poolings = (PoolingStrategy.CLS, PoolingStrategy.MEAN)
    default_pooling = PoolingStrategy.CLS

    def __init__(self, model_id: str):
        self.model_id = model_id
        self.preprocessor = FakePreprocessor()

    def check_pooling(self, strategy):
        if strategy not in self.supported_poolings:
            raise BadRequest(f"pooling '{strategy.value}' is not supported")

    def check_text(self):
        raise BadRequest(f"model {self.model_id} has no text tower")

    def tokenize(self, texts):
        self.check_text()

    def adopt_thread(self):
        pass

    def embed_batch(self, inputs: np.ndarray, requests: list[PoolRequest]):
        rows = inputs.mean(axis=(2, 3)).astype(np.float32)
        return split_rows([rows] * len(requests), requests), ExecutionTiming(len(rows), 0, 0, 0)

    def is_out_of_memory(self, exc):
        return False

    def describe(self):
        return {"platform": "fake", "family": "fake", "device": "cpu", "dtype": "float32"}


class FakeLoader:
    """The `loader=` of a ServedModel: counts loads, can fail, can hold a load open."""

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.loads = 0
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, settings: ModelSettings) -> FakeBackend:
        self.hold.wait(10)
        self.loads += 1
        if self.fail is not None:
            raise self.fail
        return FakeBackend(settings.model_id or settings.served_model_name)


SERVER = ServerSettings(port=18080, grpc_port=0)


def served(name: str, loader: FakeLoader, load_at_startup: bool = True, **limits) -> ServedModel:
    settings = ModelSettings(model_id=f"org/{name}", model_name=name, max_batch_wait_ms=0)
    fetcher = ImageFetcher(5, 1 << 20)
    return ServedModel(
        settings,
        ImagePreparer(SERVER, fetcher),
        loader=loader,
        load_at_startup=load_at_startup,
        limits=ServingLimits(request_timeout_s=10, **limits),
    )


JPEG = base64.b64encode(encode(photo("chelsea"))).decode()


async def eventually(condition, timeout_s: float = 60) -> None:
    """Wait for `condition()`, polling: a loaded machine delays, it does not fail."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- ServedModel -------------------------------------------------------------------------


def test_a_served_model_loads_embeds_unloads_and_reloads():
    async def scenario():
        loader = FakeLoader()
        model = served("m", loader)
        assert model.state() == ("LOADING", "loading")
        await model.start_loading()
        assert model.state() == ("READY", "") and model.ready
        [row] = await model.embed([JPEG])
        assert row.shape == (3,) and model.describe().model_id == "org/m"
        await model.unload("unloaded through the repository API", loads_on_demand=False)
        assert model.state() == ("UNAVAILABLE", "unloaded through the repository API")
        with pytest.raises(ServiceUnavailable, match="load it with POST /v2/repository/models/m/load"):
            model.require_ready()
        await model.start_loading()
        np.testing.assert_array_equal(await model.embed([JPEG]), [row])
        assert loader.loads == 2
        await model.close()

    asyncio.run(scenario())


def test_a_load_that_fails_leaves_the_model_unavailable_with_its_reason():
    async def scenario():
        model = served("m", FakeLoader(fail=OSError("no config.json in /models/m\nmore detail")))
        await model.start_loading()
        assert model.load_error == "OSError: no config.json in /models/m" and model.broken
        assert model.state() == ("UNAVAILABLE", "failed to load; see the server log")
        with pytest.raises(ServiceUnavailable, match="failed to load"):
            model.require_ready()
        settings_problem = served("s", FakeLoader(fail=StartupError("QUANTIZE=int8 needs NNCF")))
        await settings_problem.start_loading()
        assert settings_problem.state() == ("UNAVAILABLE", "failed to load: QUANTIZE=int8 needs NNCF")

    asyncio.run(scenario())


def test_requests_during_a_load_are_told_to_retry_and_a_second_load_shares_the_first():
    async def scenario():
        loader = FakeLoader()
        loader.hold.clear()
        model = served("m", loader)
        first, second = model.start_loading(), model.start_loading()
        assert first is second and model.loading
        with pytest.raises(Overloaded, match="is loading"):
            model.require_ready()
        loader.hold.set()
        await first
        assert loader.loads == 1 and model.ready
        await model.close()

    asyncio.run(scenario())


def test_draining_refuses_new_requests_on_any_phase():
    async def scenario():
        model = served("m", FakeLoader())
        await model.start_loading()
        model.start_draining()
        assert not model.ready and model.state() == ("READY", "")
        with pytest.raises(ServiceUnavailable, match="shutting down"):
            await model.embed([JPEG])
        await model.close()

    asyncio.run(scenario())


def test_admission_past_the_queue_limit_is_refused_before_any_work():
    async def scenario():
        model = served("m", FakeLoader(), max_queued_inputs=2)
        await model.start_loading()
        with pytest.raises(Overloaded, match=r"0 inputs waiting, limit 2"):
            await model.embed([JPEG] * 3)
        assert model.admitted_inputs == 0
        await model.close()

    asyncio.run(scenario())


# --- ModelRegistry -----------------------------------------------------------------------


def test_registry_defers_start_up_models_past_the_limit_and_makes_room_for_them():
    async def scenario():
        loaders = {"a": FakeLoader(), "b": FakeLoader()}
        registry = ModelRegistry([served(n, loader) for n, loader in loaders.items()], max_loaded=1)
        await registry.start()
        assert registry.index() == [
            {"name": "a", "version": "1", "state": "READY", "reason": ""},
            {"name": "b", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded yet"},
        ]
        assert registry.ready  # b loads on its first request: the server is ready
        b = registry.get("b")
        await registry.acquire(b, None)  # a is idle: it is unloaded to make room
        state = {entry["name"]: (entry["state"], entry["reason"]) for entry in registry.index()}
        assert state["b"] == ("READY", "")
        assert state["a"][0] == "UNAVAILABLE" and "make room for 'b' (MAX_LOADED_MODELS=1)" in state["a"][1]
        assert registry.ready and registry.get("a").loads_on_demand
        await registry.acquire(registry.get("a"), None)  # and back
        assert loaders["a"].loads == 2 and registry.get("b").loads_on_demand
        await registry.close()

    asyncio.run(scenario())


def test_requests_wait_for_a_load_they_started_and_not_for_a_repository_load():
    async def scenario():
        loader = FakeLoader()
        registry = ModelRegistry([served("m", loader, load_at_startup=False)])
        await registry.start()
        model = registry.get("m")
        loader.hold.clear()
        first = asyncio.create_task(registry.acquire(model, None))
        await eventually(lambda: model.loading)
        registry.check_can_serve(model)  # loading on demand: a second request waits too
        loader.hold.set()
        await first
        await registry.unload("m")
        loader.hold.clear()
        api_load = asyncio.create_task(registry.load("m"))
        await eventually(lambda: model.loading)
        with pytest.raises(Overloaded, match="is loading"):
            registry.check_can_serve(model)
        loader.hold.set()
        await api_load
        await registry.close()

    asyncio.run(scenario())


def test_unload_by_api_makes_the_server_unready_unload_by_ttl_does_not():
    async def scenario():
        registry = ModelRegistry([served("a", FakeLoader()), served("b", FakeLoader())], ttl_s=0.2)
        await registry.start()
        assert registry.ready
        # Both idle past MODEL_TTL_S: unloaded by the expiry loop (however slow this machine).
        await eventually(lambda: all(entry["state"] == "UNAVAILABLE" for entry in registry.index()))
        for entry in registry.index():
            assert entry["state"] == "UNAVAILABLE" and "MODEL_TTL_S" in entry["reason"]
        assert registry.ready  # each loads again on its next request
        registry.ttl_s = 3600  # no more idle unloads: the rest is about the API's
        await registry.unload("a")
        assert registry.get("a").state() == ("UNAVAILABLE", "unloaded through the repository API")
        assert not registry.ready  # a start-up model that the API took away
        with pytest.raises(ServiceUnavailable, match="load it with POST"):
            await registry.acquire(registry.get("a"), None)
        await registry.load("a")
        assert registry.get("a").ready
        await registry.close()

    asyncio.run(scenario())


def test_a_request_that_meets_an_idle_unload_waits_for_it_and_loads_again():
    """MODEL_TTL_S (or MAX_LOADED_MODELS) unloads a model the moment it is idle; a request
    arriving while that unload runs is served after a reload, not refused with 503, and the
    server stays ready throughout (seen on a loaded machine: one 503 for a busy model whose
    client paused past the TTL). An unload through the API still refuses it."""

    async def scenario():
        loader = FakeLoader()
        plane = plane_of(served("m", loader))
        await plane.models.start()
        model = plane.models.get("m")
        await eventually(lambda: model.ready)

        async def decode(limits):
            return image_spec(JPEG)

        ttl = "unloaded after 1 s idle (MODEL_TTL_S); its next request loads it again"
        # A request still being read holds the unload open (it waits for in-flight requests).
        with model.counting_request():
            idle_unload = asyncio.create_task(model.unload(ttl, loads_on_demand=True))
            await eventually(lambda: model.unloading)
            assert plane.models.ready  # the balancer keeps this replica
            loader.hold.clear()  # the reload, once the unload is done, waits here
            request = asyncio.create_task(plane.infer("m", None, decode))
            await eventually(lambda: model.awaiting_load == 1)
        await idle_unload  # it does not wait for the request that waits for the reload
        await eventually(lambda: model.loading)
        loader.hold.set()
        outcome = await request
        assert outcome.embeddings.shape == (1, 3) and loader.loads == 2 and model.ready

        with model.counting_request():
            api_unload = asyncio.create_task(model.unload("unloaded through the repository API", False))
            await eventually(lambda: model.unloading)
            with pytest.raises(ServiceUnavailable, match="is unloading"):
                await plane.infer("m", None, decode)
            assert not plane.models.ready
        await api_unload
        await plane.models.close()

    asyncio.run(scenario())


def test_a_registry_whose_every_start_up_model_failed_is_broken():
    async def scenario():
        failing = ModelRegistry([served("a", FakeLoader(fail=RuntimeError("boom")))])
        await failing.start()
        assert failing.broken and not failing.ready
        mixed = ModelRegistry([served("a", FakeLoader(fail=RuntimeError("boom"))), served("b", FakeLoader())])
        await mixed.start()
        assert not mixed.broken and mixed.ready  # b serves; a is marked in the index
        with pytest.raises(BadRequest, match="failed to load model 'a'"):
            await mixed.load("a")
        await mixed.close()

    asyncio.run(scenario())


# --- DataPlane ---------------------------------------------------------------------------


def plane_of(*models: ServedModel, **server) -> DataPlane:
    settings = ServerSettings(port=18080, grpc_port=0, **server)
    return DataPlane(settings, ModelRegistry(models), ByteBudget(1 << 20, "request bodies", "X"))


def image_spec(*images: str) -> EmbedRequestSpec:
    return EmbedRequestSpec(None, list(images), [], None, None, [], None)


def test_every_operation_goes_through_one_data_plane_entry():
    async def scenario():
        plane = plane_of(served("m", FakeLoader(), load_at_startup=False))
        await plane.models.start()

        async def decode(limits):
            return image_spec(JPEG, JPEG)

        outcome = await plane.infer("m", None, decode)  # loads on demand
        assert outcome.model_id == "org/m" and outcome.embeddings.shape == (2, 3)
        embedded = await plane.embed("m", [JPEG])
        np.testing.assert_allclose(
            embedded.embeddings[0], outcome.embeddings[0] / np.linalg.norm(outcome.embeddings[0]), rtol=1e-6
        )
        assert embedded.input_tokens == 0
        with pytest.raises(InvalidField, match="3-dimensional") as caught:
            await plane.embed("m", [JPEG], dimensions=8)
        assert caught.value.field == "dimensions"
        with pytest.raises(BadRequest, match="no text tower"):
            await plane.embed("m", ["a cat"])
        assert plane.statistics("m")[0]["inference_stats"]["fail"]["count"] == 2
        with pytest.raises(Forbidden, match="MODEL_CONTROL_MODE=explicit"):
            await plane.unload("m")
        await plane.models.close()

    asyncio.run(scenario())
