"""RUNTIME=auto and OPENVINO_HINT=auto: measured once on this machine, with torch's float32
embeddings kept, cached, and never overriding a setting that was given."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

from app.embedding import auto_runtime
from app.embedding.auto_runtime import Measured, choose, resolve
from app.embedding.backend import TEXT, embed_images
from app.embedding.pooling import PoolingStrategy
from app.embedding.selection import load_backend
from app.embedding.torch_backend import TorchBackend
from app.settings.model import ModelSettings, OpenVinoHint, RuntimeSetting
from tests.support import photo


def model_settings(folder, cache, **overrides) -> ModelSettings:
    values = dict(model_id=str(folder), model_dir="/nonexistent", model_cache_dir=cache, device="cpu")
    return ModelSettings(**(values | overrides))


def loads_logged(caplog) -> int:
    return sum(record.getMessage().startswith("loaded model") for record in caplog.records)


def test_auto_is_the_default_measures_once_and_keeps_torchs_embeddings(tiny_models, tmp_path, caplog):
    settings = model_settings(tiny_models["dinov2"], tmp_path / "cache", max_batch_size=4)
    assert settings.runtime is RuntimeSetting.AUTO and settings.openvino_hint is OpenVinoHint.AUTO
    caplog.set_level(logging.INFO)
    chosen = load_backend(settings)
    [decision_file] = list((tmp_path / "cache" / "auto").iterdir())
    decision = json.loads(decision_file.read_text())
    assert {m["runtime"] for m in decision["measured"]} == {"torch", "openvino"}
    assert {m["hint"] for m in decision["measured"]} == {None, "throughput", "latency"}
    for measured in decision["measured"]:
        assert measured["images_per_second"] > 0 and measured["batch1_ms"] > 0
        assert measured["runtime"] == "torch" or measured["min_cosine"] >= 0.99999
    assert chosen.describe()["platform"] == (
        "openvino" if decision["runtime"] == "openvino" else "pytorch_transformers"
    )
    # The measured forward batch, at most MAX_BATCH_SIZE, is the one the backend runs.
    assert chosen.max_batch_size == decision["batch_size"] <= 4
    assert any(
        "RUNTIME=auto: " in r.getMessage() and "measured: torch" in r.getMessage() for r in caplog.records
    )

    images = [photo("chelsea"), photo("coffee")]
    reference = TorchBackend.from_settings(settings.model_copy(update={"runtime": RuntimeSetting.TORCH}))
    expected, _ = embed_images(reference, images, PoolingStrategy.CLS, True)
    got, _ = embed_images(chosen, images, PoolingStrategy.CLS, True)
    np.testing.assert_allclose(got, expected, atol=1e-4)

    caplog.clear()
    again = load_backend(settings)  # the cached decision: only the winner loads
    assert again.describe() == chosen.describe() and loads_logged(caplog) == 1
    assert any("decided on this machine earlier" in r.getMessage() for r in caplog.records)


def test_a_model_with_a_text_tower_stays_on_torch(text_models, tmp_path):
    backend = load_backend(model_settings(text_models["clip"], tmp_path / "cache", max_batch_size=2))
    assert TEXT in backend.modalities and backend.describe()["platform"] == "pytorch_transformers"
    [decision_file] = list((tmp_path / "cache" / "auto").iterdir())
    assert "text tower" in json.loads(decision_file.read_text())["reason"]


@pytest.mark.parametrize(
    ("overrides", "reason"), [(dict(compile=True), "COMPILE"), (dict(dtype="bfloat16"), "DTYPE=bfloat16")]
)
def test_torch_only_settings_choose_torch_without_measuring(tiny_models, tmp_path, caplog, overrides, reason):
    caplog.set_level(logging.INFO)
    resolved = resolve(model_settings(tiny_models["vit"], tmp_path / "cache", **overrides))
    assert resolved.runtime is RuntimeSetting.TORCH and not (tmp_path / "cache").exists()
    assert any(reason in r.getMessage() for r in caplog.records)


def test_a_given_runtime_and_hint_are_kept(tiny_models, tmp_path):
    for given in (
        dict(runtime="torch"),
        dict(runtime="openvino", openvino_hint="latency"),
        dict(runtime="torch", openvino_hint="auto"),  # the hint applies to OpenVINO only
    ):
        settings = model_settings(tiny_models["vit"], tmp_path / "cache", **given)
        assert resolve(settings) == settings
    assert not (tmp_path / "cache").exists()


def measured(runtime, hint, precision, images_per_second, batch1_ms, batch_size=32) -> Measured:
    return Measured(runtime, hint, precision, images_per_second, batch1_ms, None, batch_size)


def test_a_burst_on_a_shared_machine_slows_a_round_not_the_candidate(tiny_models, tmp_path, monkeypatch):
    # Rounds of 4/3 s: the two slowed rounds (at most 1.6 s each, however loaded this machine
    # is) leave time for a third within the probe.
    monkeypatch.setattr(auto_runtime, "PROBE_SECONDS", 4.0)
    # One intra-op thread: an OpenMP team of two on a loaded two-core machine spins its
    # forwards into hundreds of milliseconds, and the quiet round would not be quiet.
    backend = TorchBackend.from_settings(
        model_settings(
            tiny_models["vit"], tmp_path / "cache", runtime="torch", max_batch_size=2, torch_threads=1
        )
    )
    pixels = np.stack([backend.preprocessor(photo(name)) for name in ("chelsea", "coffee")])
    forward, one_round = backend.embed_batch, auto_runtime._throughput
    readings: list[float] = []

    def counted_round(*args):
        readings.append(one_round(*args))
        return readings[-1]

    def neighbour_burst_then_quiet(batch, requests):
        # Failure injection: in the first two rounds every forward waits 0.25 s (a
        # neighbour holding the cores: at most 2 images / 0.25 s = 8 img/s), then the
        # machine is quiet again.
        if len(readings) < 2:
            time.sleep(0.25)
        return forward(batch, requests)

    monkeypatch.setattr(auto_runtime, "_throughput", counted_round)
    backend.embed_batch = neighbour_burst_then_quiet
    measured = auto_runtime._measure(backend, pixels, "torch", None, "float32", None)
    assert len(readings) >= 3 and max(readings[:2]) <= 8.5
    quiet = readings[2]
    assert quiet > 3 * max(readings[:2])  # the tiny model's forward, even on a loaded machine
    # One reading over the whole probe would be dragged to about a third of the quiet
    # round's speed; the candidate is measured by its best round.
    assert measured.images_per_second >= quiet


class TimedForward:
    """A backend reduced to the cost model of its forward (the knee is a rule on measured
    speeds): `per_call` seconds a batch plus `per_image` seconds an image."""

    max_batch_size = 16
    default_pooling = PoolingStrategy.CLS
    concurrent_batches = 1

    def __init__(self, per_call: float, per_image: float):
        self.per_call, self.per_image = per_call, per_image

    def adopt_thread(self) -> None:
        pass

    def embed_batch(self, batch, requests):
        time.sleep(self.per_call + self.per_image * len(batch))
        return [np.zeros((len(batch), 2), np.float32)], None


# Sleeps long enough that a loaded machine's late wake-ups (tens of ms) stay within the 5%.
@pytest.mark.parametrize(("per_call", "per_image", "knee"), [(0.1, 0.0, 16), (0.0, 0.03, 8)])
def test_the_forward_batch_is_the_smallest_that_reaches_the_best_speed(per_call, per_image, knee):
    backend = TimedForward(per_call, per_image)
    pixels = np.zeros((2, 3, 4, 4), np.float32)
    largest = auto_runtime._throughput(backend, np.resize(pixels, (16, *pixels.shape[1:])))
    # A cost per batch: only the largest batch reaches the best speed. A cost per image:
    # every batch runs at the same speed; the smallest, floored at MIN_FORWARD_BATCH (the
    # server's own cost per forward pass is not in the sweep), keeps requests from waiting.
    assert auto_runtime._knee(backend, pixels, largest) == knee


def test_the_fastest_wins_and_near_ties_go_to_the_lower_latency():
    torch = measured("torch", None, "float32", 70, 14)
    throughput = measured("openvino", "throughput", "float32", 300, 8)
    # A shared machine's reading of one hint can be a fifth low: 240 is within 25% of 300.
    latency = measured("openvino", "latency", "float32", 240, 5, batch_size=8)
    chosen = choose([torch, throughput, latency])
    assert chosen.hint == "latency"
    # The winner's forward batch is served, never above the MAX_BATCH_SIZE given.
    assert chosen.batch_size == 8 and "forward batch 8" in chosen.reason
    assert chosen.settings(ModelSettings(max_batch_size=32)).max_batch_size == 8
    assert chosen.settings(ModelSettings(max_batch_size=4)).max_batch_size == 4
    slower_latency = measured("openvino", "latency", "float32", 220, 5)  # several streams' real gain
    decision = choose([torch, throughput, slower_latency])
    assert (decision.runtime, decision.hint) == ("openvino", "throughput")
    assert "torch 70.0 img/s" in decision.reason and "batch 1 8.0 ms" in decision.reason
    assert choose([]).runtime == "torch"


def test_int8_is_served_only_where_it_is_faster_than_float32():
    int8 = measured("openvino", "throughput", "int8", 105, 9)
    float32 = measured("openvino", "throughput", "float32", 124, 8)
    decision = choose([int8, float32], prefer_int8=True)
    assert decision.precision == "float32" and "not faster than float32" in decision.reason
    settings = ModelSettings(runtime="openvino", quantize="int8", calibration_dir=".", openvino_hint="auto")
    assert decision.settings(settings).quantize.value == "none"
    faster = measured("openvino", "latency", "int8", 200, 4)
    assert choose([faster, float32], prefer_int8=True).precision == "int8"


def test_several_workers_share_one_measurement(tiny_models, tmp_path):
    from app.__main__ import decide_runtime_once
    from app.settings import Settings

    settings = Settings(
        model_id=str(tiny_models["vit"]),
        model_dir="/nonexistent",
        model_cache_dir=tmp_path / "cache",
        device="cpu",
        workers=2,
        max_batch_size=2,
    )
    decide_runtime_once(settings)  # before the workers start; each then reads the decision
    [decision_file] = list((tmp_path / "cache" / "auto").iterdir())
    decision = json.loads(decision_file.read_text())
    assert decision["runtime"] in ("torch", "openvino") and decision["measured"]
