"""`python -m app.batch` on a real Ray: a head and a worker node started on this machine
(object stores of 80 MiB), real photos and broken files, a live server to compare with, a
node removed mid-run, URLs on a local static server under the URL policy."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray.data")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from app.batch.__main__ import main  # noqa: E402
from app.client import main as client_main  # noqa: E402
from tests.support import (  # noqa: E402
    PHOTO_NAMES,
    encode,
    photo,
    photo_folder,
    run_server,
    serve_in_thread,
    server_settings,
)

NAMES = PHOTO_NAMES
STORE = 80 * 1024 * 1024
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing sent to Ray's servers


@pytest.fixture(scope="module")
def cluster():
    """A head node (1 CPU) and a worker node (2 CPUs), this process connected as the driver.
    Its workers run at the tests' own priority: Ray starts them at niceness 15, which on a
    loaded machine (two busy processes on two cores) starved them (the module did not end in
    18 minutes; 4 minutes at niceness 0). The tests check what the pipeline does, not how it
    yields to other work."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")  # read by each node's raylet as it starts
        started = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False},
        )
        started.add_node(num_cpus=2, object_store_memory=STORE)
        started.wait_for_nodes()
        ray.init(address=started.address, log_to_driver=False)
        try:
            yield started
        finally:
            ray.shutdown()
            started.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Ten real photos in two sub-folders, a truncated JPEG and a text file named .png."""
    folder = photo_folder(tmp_path_factory.mktemp("photos"), (120, 90))
    (folder / "truncated.jpg").write_bytes(encode(photo("chelsea"))[:2000])
    (folder / "notes.png").write_bytes(b"not an image, only a name that says so")
    return folder


def _batch(source, out, model: Path, *extra: str) -> int:
    return main(
        [
            str(source),
            "--out",
            str(out),
            "--model-id",
            str(model),
            "--model-dir",
            str(out.parent / "no-mounted-model"),
            "--model-cache-dir",
            str(out.parent / "cache"),
            "--runtime",
            "torch",
            "--device",
            "cpu",
            "--max-batch-size",
            "4",
            "--images-per-task",
            "3",
            "--no-progress",
            *extra,
        ]
    )


def _rows(out: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.asarray(table.column("embedding").to_pylist(), np.float32), strict=True))


def _failures(out: Path) -> dict[str, str]:
    lines = out.with_name(out.name + ".failures.jsonl").read_text().splitlines()
    return {row["id"]: row["error"] for row in map(json.loads, lines)}


def test_a_folder_equals_the_server_and_a_rerun_embeds_nothing(cluster, photos, tiny_models, tmp_path):
    """Decoded in the actors (the default on CPU) and in tasks of their own: the same rows,
    the same failures, both equal to the server's answers."""
    model = tiny_models["dinov2"]
    out = tmp_path / "photos.emb"
    good = {f"{'a' if i % 2 else 'b'}/{name}.jpg" for i, name in enumerate(NAMES)}
    runs = {}
    for decode_in, folder in (("tasks", tmp_path / "tasks.emb"), ("auto", out)):
        # the two bad files fail the exit code
        assert _batch(photos, folder, model, "--actors", "2", "--decode-in", decode_in) == 1
        runs[decode_in] = _rows(folder)
        assert set(runs[decode_in]) == good
        failures = _failures(folder)
        assert set(failures) == {"truncated.jpg", "notes.png"}
        assert "corrupt or truncated" in failures["truncated.jpg"]
        assert "not a recognised image format" in failures["notes.png"]
        assert pq.read_schema(next(folder.glob("part-*.parquet"))).field("embedding").type.list_size == 32

    # The live server's answers for the same files (the bulk client: its schema, its ids).
    settings = server_settings(model, tmp_path / "server", max_batch_size=8)
    with run_server(settings) as server:
        served = tmp_path / "served.parquet"
        client = [str(photos), "--server", server.url, "--model", "dinov2", "--out", str(served)]
        client_main([*client, "--no-progress"])
    answers = _rows(served)
    assert set(answers) == good
    for rows in runs.values():
        for image_id in good:
            np.testing.assert_allclose(rows[image_id], answers[image_id], rtol=1e-5, atol=1e-6)

    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert _batch(photos, out, model, "--actors", "2") == 1  # the bad files are tried again
    assert sorted(p.name for p in out.glob("part-*.parquet")) == parts  # nothing new written
    assert set(_failures(out)) == {"truncated.jpg", "notes.png"}


def test_a_node_removed_mid_run(cluster, tiny_models, tmp_path):
    """The actors and tasks on a node that goes away run again elsewhere: every id once.
    The pool autoscales (1,2): a fixed pool larger than what the remaining nodes hold
    would wait for its lost actor forever, as in any Ray Data job."""
    folder = tmp_path / "many"
    folder.mkdir()
    base = photo("coffee").resize((64, 48))
    for index in range(240):
        (folder / f"{index:03d}.png").write_bytes(encode(base.rotate(index * 1.5), "PNG"))
    doomed = cluster.add_node(num_cpus=2, object_store_memory=STORE)
    cluster.wait_for_nodes()
    out = tmp_path / "many.emb"
    outcome: list[int] = []
    job = threading.Thread(
        target=lambda: outcome.append(
            _batch(folder, out, tiny_models["dinov2"], "--actors", "1,2", "--images-per-task", "2")
        )
    )
    job.start()
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.is_alive(), "the job ended before the node could be removed"
    written_before = len(list(out.glob("part-*.parquet")))
    cluster.remove_node(doomed)
    job.join(timeout=300)
    assert not job.is_alive() and outcome == [0]
    rows = _rows(out)  # asserts no id twice
    assert set(rows) == {f"{index:03d}.png" for index in range(240)}
    assert written_before < len(list(out.glob("part-*.parquet")))


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests += 1
        super().do_GET()


def test_urls_follow_the_url_policy(cluster, photos, tiny_models, tmp_path):
    """A loopback URL is refused (listed, never fetched) unless ALLOW_PRIVATE_URLS is set."""
    handler = lambda *a, **k: _CountingHandler(*a, directory=str(photos), **k)  # noqa: E731
    with serve_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        listing = tmp_path / "urls.txt"
        urls = [f"{url}/b/chelsea.jpg", f"{url}/a/coffee.jpg", f"{url}/missing.jpg"]
        listing.write_text("\n".join(urls) + "\n")
        refused = tmp_path / "refused.emb"
        assert _batch(listing, refused, tiny_models["dinov2"]) == 1
        assert _CountingHandler.requests == 0
        assert not list(refused.glob("part-*.parquet"))
        failures = _failures(refused)
        assert set(failures) == set(urls) and all("refused by policy" in e for e in failures.values())

        allowed = tmp_path / "allowed.emb"
        assert _batch(listing, allowed, tiny_models["dinov2"], "--allow-private-urls", "true") == 1
        assert set(_rows(allowed)) == set(urls[:2])
        assert "HTTP 404" in _failures(allowed)[urls[2]]


def test_int8_runs_the_servers_own_export(cluster, photos, tiny_models, tmp_path):
    """QUANTIZE=int8: the pipeline loads the export the server made (same settings, same
    MODEL_CACHE_DIR), through the same gate, and answers what the server answers."""
    from bench.photos import write_calibration_dir

    model = tiny_models["dinov2"]
    calibration = write_calibration_dir(tmp_path / "calibration", count=16)
    int8 = dict(
        runtime="openvino",
        openvino_hint="throughput",
        quantize="int8",
        calibration_dir=calibration,
        quantize_min_neighbours_kept=0,
    )
    settings = server_settings(model, tmp_path / "server", model_cache_dir=tmp_path / "cache", **int8)
    with run_server(settings) as server:
        served = tmp_path / "served.parquet"
        client = [str(photos), "--server", server.url, "--model", "dinov2", "--out", str(served)]
        client_main([*client, "--no-progress"])
    exports = sorted((tmp_path / "cache" / "openvino").iterdir())
    out = tmp_path / "int8.emb"
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in int8.items()]
    assert _batch(photos, out, model, *flags) == 1  # the two bad files
    assert sorted((tmp_path / "cache" / "openvino").iterdir()) == exports  # no second export
    rows, answers = _rows(out), _rows(served)
    assert set(rows) == set(answers) and len(rows) == len(NAMES)
    for image_id, answer in answers.items():
        np.testing.assert_allclose(rows[image_id], answer, rtol=1e-5, atol=1e-6)


def test_a_pool_that_leaves_no_cpu_for_decoding_is_refused(cluster, photos, tiny_models, tmp_path):
    """Nine actors of one CPU on this cluster's three (five while the node test's third node
    lives) would starve the decoding tasks forever; the job refuses them in one line."""
    with pytest.raises(
        SystemExit, match="leave none for the decoding and writing tasks: at most [24] actors"
    ):
        _batch(photos, tmp_path / "out.emb", tiny_models["dinov2"], "--actors", "9")
    assert not (tmp_path / "out.emb").exists()


def test_a_pooling_the_family_lacks_stops_the_job_in_one_line(cluster, photos, tiny_models, tmp_path):
    """The driver's model check refuses the setting by name, before any actor starts or any
    row is written."""
    with pytest.raises(
        SystemExit, match="cannot embed with these settings: POOLING_STRATEGY=cls: .* support mean, max"
    ):
        _batch(photos, tmp_path / "out.emb", tiny_models["swinv2"], "--pooling-strategy", "cls")
    assert not (tmp_path / "out.emb").exists()


def test_bad_flags_exit_before_ray_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "--out", str(tmp_path / "out"), "--actors", "3,1"])
    assert exited.value.code == 2 and "MIN <= MAX" in capsys.readouterr().err
    gpu_on_openvino = ["--gpus-per-actor", "1", "--runtime", "openvino"]
    with pytest.raises(SystemExit, match="--gpus-per-actor needs RUNTIME=torch"):
        main([str(tmp_path), "--out", str(tmp_path / "out"), *gpu_on_openvino])


def test_where_decoding_runs_and_how_many_threads_an_actor_takes():
    """On CPU the actors decode their own rows, with their share of this machine's cores;
    beside GPU actors decoding runs in tasks, and an actor beside tasks keeps to the CPUs
    it reserves (more threads would fight the tasks for the cores)."""
    from app.batch.__main__ import actor_threads, build_parser, decodes_in_actors
    from app.cpus import usable_cpus

    def parsed(*flags: str):
        return build_parser().parse_args([".", "--out", "out", *flags])

    assert decodes_in_actors(parsed()) and not decodes_in_actors(parsed("--gpus-per-actor", "1"))
    assert decodes_in_actors(parsed("--gpus-per-actor", "1", "--decode-in", "actors"))
    assert not decodes_in_actors(parsed("--decode-in", "tasks"))
    assert actor_threads(parsed()) == usable_cpus()
    assert actor_threads(parsed("--actors", "1,2")) == max(1, usable_cpus() // 2)
    assert actor_threads(parsed("--decode-in", "tasks", "--cpus-per-actor", "1")) == 1
    assert actor_threads(parsed("--address", "ray://head:10001", "--cpus-per-actor", "3")) == 3
