"""`python -m app.client` against live servers on 127.0.0.1: a folder, a URL list, a 503
with Retry-After, a server that dies mid-run and a resumed run, bad files listed."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from app.client import main
from tests.support import (
    LOOPBACK,
    data_uri,
    embeddings_of,
    encode,
    image_request,
    photo,
    run_server,
    serve_in_thread,
    server_settings,
    static_server,
)

NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera", "moon", "brick", "grass", "clock", "coins")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    settings = server_settings(tiny_models["dinov2"], tmp_path_factory.mktemp("srv"), max_batch_size=8)
    with run_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(NAMES):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"{name}.jpg").write_bytes(encode(photo(name).resize((96, 72))))
    return folder


def _rows(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.asarray(table.column("embedding").to_pylist(), np.float32), strict=True))


def _run(source, out, *servers, extra=()):
    args = [str(source), "--model", "dinov2", "--out", str(out), "--no-progress", "--batch", "3", *extra]
    for url in servers:
        args += ["--server", url]
    return main(args)


def test_a_folder_with_a_bad_file(server, photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in photos.rglob("*.jpg"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    out = tmp_path / "out.parquet"
    assert _run(folder, out, server.url) == 1  # a failure is reported in the exit code
    rows = _rows(out)
    assert set(rows) == {f"{name}.jpg" for name in NAMES}
    [failure] = [json.loads(line) for line in out.with_name("out.parquet.failures.jsonl").read_text().splitlines()]
    assert failure["id"] == "broken.jpg" and "not a recognised image format" in failure["error"]
    # The same numbers the server gives for the image alone.
    alone = httpx.post(server.infer_url(), json=image_request([data_uri((folder / "coffee.jpg").read_bytes())]))
    np.testing.assert_allclose(rows["coffee.jpg"], embeddings_of(alone)[0], rtol=1e-5, atol=1e-6)
    assert not out.with_name("out.parquet.parts").exists()


def test_a_url_list_to_npy(server, photos, tmp_path):
    with static_server(photos) as url:
        listing = tmp_path / "urls.txt"
        urls = [f"{url}/{p.relative_to(photos)}" for p in sorted(photos.rglob("*.jpg"))]
        listing.write_text("# photos\n" + "\n".join(urls) + "\n\n")
        out = tmp_path / "urls.npy"
        assert _run(listing, out, server.url, extra=["--normalize"]) == 0
    vectors = np.load(out)
    ids = [line.split("\t")[0] for line in out.with_suffix(".ids.txt").read_text().splitlines()]
    assert sorted(ids) == sorted(urls) and vectors.shape == (len(NAMES), 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)


def _die(httpd):
    httpd.shutdown()
    httpd.server_close()  # new connections are refused from now on


@contextmanager
def forwarding_server(target: str, busy_first: int = 0, die_after: int | None = None):
    """Forwards POSTs to `target`; answers the first `busy_first` with 503 + Retry-After: 1;
    after `die_after` forwarded requests it stops listening, as a crashed pod would."""
    state = {"busy": 0, "forwarded": 0}

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state["busy"] < busy_first:
                state["busy"] += 1
                payload = b'{"error": "server is at capacity; retry shortly"}'
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() == "inference-header-content-length"}
            answer = httpx.post(target + self.path, content=body, headers=headers, timeout=60)
            state["forwarded"] += 1
            self.send_response(answer.status_code)
            for name in ("content-type", "inference-header-content-length"):
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)
            if die_after is not None and state["forwarded"] >= die_after:
                threading.Thread(target=_die, args=(self.server,)).start()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), Forward)
    with serve_in_thread(httpd) as url:
        yield url, state


def test_503_is_retried_after_its_retry_after(server, photos, tmp_path):
    out = tmp_path / "out.parquet"
    with forwarding_server(server.url, busy_first=2) as (url, state):
        started = time.monotonic()
        assert _run(photos, out, url, extra=["--concurrency", "1"]) == 0
        assert time.monotonic() - started >= 2.0  # two waits of Retry-After: 1
    assert state["busy"] == 2 and len(_rows(out)) == len(NAMES)


def test_a_server_that_dies_mid_run_then_a_resumed_run(server, photos, tmp_path):
    out = tmp_path / "out.parquet"
    with forwarding_server(server.url, die_after=2) as (url, _):
        code = _run(photos, out, url, extra=["--concurrency", "1", "--retries", "2", "--backoff", "0.05"])
    assert code == 1
    first = _rows(out)
    assert len(first) == 6  # two batches of three made it; the rest are listed, not dropped
    failures = out.with_name("out.parquet.failures.jsonl").read_text().splitlines()
    assert len(failures) == len(NAMES) - 6 and all("gave up after 2 retries" in f for f in failures)
    assert _run(photos, out, server.url) == 0  # resumed against a live server
    second = _rows(out)
    assert len(second) == len(NAMES)
    for key, vector in first.items():
        np.testing.assert_array_equal(second[key], vector)  # kept, not recomputed


def test_ctrl_c_leaves_a_valid_partial_output(server, photos, tmp_path):
    """SIGINT to a real client process mid-run: what finished is in a readable output."""
    import signal

    many = tmp_path / "many.txt"
    jpgs = sorted(str(p) for p in photos.rglob("*.jpg"))
    many.write_text("\n".join(f"{p}" for p in jpgs * 1) + "\n")
    out = tmp_path / "out.parquet"
    with forwarding_server(server.url, busy_first=1000) as (url, _):  # never answers with embeddings
        process = subprocess.Popen(
            [sys.executable, "-m", "app.client", str(many), "--server", url, "--server", server.url,
             "--model", "dinov2", "--out", str(out), "--batch", "1", "--concurrency", "1", "--no-progress"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(3)  # the live server has embedded some; the busy one holds the rest back
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    rows = _rows(out)
    assert 0 < len(rows) < len(jpgs)


def test_csv_and_parquet_columns_of_paths_and_urls(tmp_path):
    import csv

    import pyarrow as pa

    from app.client import read_items

    (tmp_path / "img").mkdir()
    rows = [{"name": "x", "path": "img/a.jpg"}, {"name": "y", "path": "https://images.invalid/b.jpg"},
            {"name": "z", "path": "img/a.jpg"}]  # fmt: skip
    with (tmp_path / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["name", "path"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.table({"path": [r["path"] for r in rows]}), tmp_path / "table.parquet")
    for source in ("table.csv", "table.parquet"):
        items = read_items(tmp_path / source, column="path")
        assert [i.id for i in items] == ["img/a.jpg", "https://images.invalid/b.jpg"]  # duplicates once
        assert items[0].source == str(tmp_path / "img/a.jpg") and items[1].source == items[1].id
