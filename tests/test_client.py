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
    PHOTO_NAMES,
    data_uri,
    embeddings_of,
    encode,
    image_request,
    metric,
    photo,
    photo_folder,
    run_server,
    scrape,
    serve_in_thread,
    server_settings,
    static_server,
)

NAMES = PHOTO_NAMES
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    settings = server_settings(tiny_models["dinov2"], tmp_path_factory.mktemp("srv"), max_batch_size=8)
    with run_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos"), (96, 72))


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
    [failure] = [
        json.loads(line) for line in out.with_name("out.parquet.failures.jsonl").read_text().splitlines()
    ]
    assert failure["id"] == "broken.jpg" and "not a recognised image format" in failure["error"]
    # The same numbers the server gives for the image alone.
    alone = httpx.post(
        server.infer_url(), json=image_request([data_uri((folder / "coffee.jpg").read_bytes())])
    )
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
    ids = [json.loads(line)["id"] for line in out.with_suffix(".ids.jsonl").read_text().split("\n") if line]
    assert sorted(ids) == sorted(urls) and vectors.shape == (len(NAMES), 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)


def test_files_with_the_same_bytes_are_sent_once(server, photos, tmp_path):
    """Twins within one batch and across batches: one image sent for each distinct content,
    a row for every name."""
    folder = tmp_path / "twins"
    folder.mkdir()
    originals = sorted(photos.rglob("*.jpg"))
    for index, path in enumerate(originals):
        (folder / f"{index}.jpg").write_bytes(path.read_bytes())
        (folder / f"{index}-copy.jpg").write_bytes(path.read_bytes())
    (folder / "z-third-copy.jpg").write_bytes(originals[0].read_bytes())
    before = scrape(server)
    out = tmp_path / "twins.parquet"
    assert _run(folder, out, server.url) == 0
    received = metric(scrape(server), "embed_images_total", model="dinov2") - metric(
        before, "embed_images_total", model="dinov2"
    )
    assert received == len(originals)
    rows = _rows(out)
    assert len(rows) == 2 * len(originals) + 1
    for index in range(len(originals)):
        assert rows[f"{index}.jpg"].tobytes() == rows[f"{index}-copy.jpg"].tobytes()
    assert rows["z-third-copy.jpg"].tobytes() == rows["0.jpg"].tobytes()


def _die(httpd):
    httpd.shutdown()
    httpd.server_close()  # new connections are refused from now on


@contextmanager
def forwarding_server(
    target: str, busy_first: int = 0, die_after: int | None = None, retry_after: str = "1", transform=None
):
    """Forwards POSTs to `target`; answers the first `busy_first` with 503 + Retry-After;
    after `die_after` forwarded requests it stops listening, as a crashed pod would (from
    that answer on, deterministically: a request that got in before the listener closed is
    dropped without an answer). `transform(n, status, headers, content)` may rewrite the
    n-th forwarded answer (n from 0)."""
    state = {"busy": 0, "forwarded": 0, "dead": False}
    lock = threading.Lock()

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                dead = state["dead"]
                busy = state["busy"] < busy_first
                state["busy"] += busy
            if dead:
                self.close_connection = True
                return
            if busy:
                payload = b'{"error": "server is at capacity; retry shortly"}'
                self._answer(503, {"Retry-After": retry_after}, payload)
                return
            headers = {
                k: v for k, v in self.headers.items() if k.lower() == "inference-header-content-length"
            }
            answer = httpx.post(target + self.path, content=body, headers=headers, timeout=60)
            with lock:
                number = state["forwarded"]
                state["forwarded"] += 1
                if die_after is not None and state["forwarded"] >= die_after:
                    state["dead"] = True
                    threading.Thread(target=_die, args=(self.server,)).start()
            status, content = answer.status_code, answer.content
            headers = {
                k: answer.headers[k]
                for k in ("content-type", "inference-header-content-length")
                if k in answer.headers
            }
            if transform is not None:
                status, headers, content = transform(number, status, headers, content)
            self._answer(status, headers, content)

        def _answer(self, status: int, headers: dict, content: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

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
    with (
        forwarding_server(server.url, busy_first=1000) as (busy, busy_state),  # never answers with embeddings
        forwarding_server(server.url) as (live, live_state),
    ):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.client",
                str(many),
                "--server",
                busy,
                "--server",
                live,
                "--model",
                "dinov2",
                "--out",
                str(out),
                "--batch",
                "1",
                "--concurrency",
                "1",
                "--no-progress",
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C must reach it even when this test runs in a background job (which starts
            # with SIGINT ignored, and children inherit that).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        # Interrupted at a protocol point, not after a guessed time: once the live server has
        # embedded one image (each further one waits a second's Retry-After on the busy one).
        deadline = time.monotonic() + 120
        while live_state["forwarded"] < 1 or busy_state["busy"] < 2:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
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
    rows = [
        {"name": "x", "path": "img/a.jpg"},
        {"name": "y", "path": "https://images.invalid/b.jpg"},
        {"name": "z", "path": "img/a.jpg"},
    ]
    with (tmp_path / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["name", "path"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.table({"path": [r["path"] for r in rows]}), tmp_path / "table.parquet")
    for source in ("table.csv", "table.parquet"):
        items = read_items(tmp_path / source, column="path")
        assert [i.id for i in items] == ["img/a.jpg", "https://images.invalid/b.jpg"]  # duplicates once
        assert items[0].source == str(tmp_path / "img/a.jpg") and items[1].source == items[1].id


# --- what a hostile or broken server, or odd names, must not do to a run ---------------------


def _rewrite_raw(content: bytes, headers: dict, change) -> tuple[bytes, dict]:
    """Apply `change` to the raw embeddings of a binary V2 answer."""
    length = int(headers["inference-header-content-length"])
    header = json.loads(content[:length])
    rows, dim = header["outputs"][0]["shape"]
    vectors = change(np.frombuffer(content[length:], "<f4").reshape(rows, dim).copy())
    header["outputs"][0]["shape"] = list(vectors.shape)
    header["outputs"][0]["parameters"]["binary_data_size"] = vectors.nbytes
    encoded = json.dumps(header).encode()
    return encoded + vectors.astype("<f4").tobytes(), headers | {
        "inference-header-content-length": str(len(encoded))
    }


def test_odd_file_names_survive_an_npy_output_and_its_resume(server, tmp_path):
    names = ["new\nline", "tab\there", "sep\x1cfile", "nel\x85name", "ls\u2028name", "plain"]
    folder = tmp_path / "odd"
    folder.mkdir()
    for index, name in enumerate(names):
        (folder / f"{name}.jpg").write_bytes(encode(photo(NAMES[index]).resize((64, 48))))
    out = tmp_path / "odd.npy"
    assert _run(folder, out, server.url) == 0
    ids = [json.loads(line)["id"] for line in out.with_suffix(".ids.jsonl").read_text().split("\n") if line]
    vectors = np.load(out)
    assert sorted(ids) == sorted(f"{name}.jpg" for name in names) and vectors.shape == (len(names), 32)
    for row, name in zip(vectors, ids, strict=True):  # each embedding is its own file's
        alone = httpx.post(server.infer_url(), json=image_request([data_uri((folder / name).read_bytes())]))
        np.testing.assert_allclose(row, embeddings_of(alone)[0], rtol=1e-5, atol=1e-6)
    assert _run(folder, out, server.url) == 0  # the resume reads the ids back: nothing to do
    assert np.load(out).shape == (len(names), 32)


def test_nan_embeddings_fail_their_images_not_the_run(server, photos, tmp_path):
    def nan_first_row(number, status, headers, content):
        if number == 0:
            content, headers = _rewrite_raw(
                content, headers, lambda v: np.vstack([np.full((1, v.shape[1]), np.nan), v[1:]])
            )
        return status, headers, content

    out = tmp_path / "out.parquet"
    with forwarding_server(server.url, transform=nan_first_row) as (url, _):
        assert _run(photos, out, url, extra=["--concurrency", "1"]) == 1
    rows = _rows(out)
    assert len(rows) == len(NAMES) - 1 and all(np.isfinite(v).all() for v in rows.values())
    [failure] = [
        json.loads(line) for line in out.with_name("out.parquet.failures.jsonl").read_text().splitlines()
    ]
    assert failure["error"] == "the server answered a NaN or infinite embedding"


def test_a_malformed_answer_fails_its_batch_not_the_run(server, photos, tmp_path):
    def garbage_once(number, status, headers, content):
        return (
            (200, {"content-type": "application/json"}, b'{"outputs": "no"}')
            if number == 1
            else (status, headers, content)
        )

    out = tmp_path / "out.parquet"
    with forwarding_server(server.url, transform=garbage_once) as (url, _):
        assert _run(photos, out, url, extra=["--concurrency", "1", "--retries", "0"]) == 1
    assert len(_rows(out)) == len(NAMES) - 3
    failures = [
        json.loads(line) for line in out.with_name("out.parquet.failures.jsonl").read_text().splitlines()
    ]
    assert len(failures) == 3 and all(
        "without a readable raw_embeddings output" in f["error"] for f in failures
    )


def test_two_servers_of_different_sizes_do_not_lose_the_run(server, photos, tmp_path):
    def shorter(number, status, headers, content):
        content, headers = _rewrite_raw(content, headers, lambda v: v[:, :16])
        return status, headers, content

    out = tmp_path / "out.parquet"
    with forwarding_server(server.url, transform=shorter) as (other, _):
        # The first answer (the real server's) sets the run's size; the other's batches retry.
        code = _run(photos, out, server.url, other, extra=["--concurrency", "1", "--backoff", "0.01"])
    assert code == 0
    rows = _rows(out)
    assert len(rows) == len(NAMES) and {v.shape for v in rows.values()} == {(32,)}


def test_retry_after_is_capped(server, photos, tmp_path):
    out = tmp_path / "out.parquet"
    with forwarding_server(server.url, busy_first=1, retry_after="86400") as (url, state):
        started = time.monotonic()
        assert (
            _run(photos, out, url, extra=["--concurrency", "1", "--retries", "1", "--max-retry-after", "0.2"])
            == 0
        )
        assert time.monotonic() - started < 60
    assert state["busy"] == 1 and len(_rows(out)) == len(NAMES)


def test_refused_connections_and_loading_503s_have_their_own_budgets(server, photos, tmp_path):
    """A server restarting: connections refused, then 503 while it loads, then answers.
    Six of each with --retries 6 embeds everything (one shared budget gave up)."""
    from tests.support import free_port

    port = free_port()
    out = tmp_path / "out.parquet"
    result: dict = {}
    client = threading.Thread(
        target=lambda: result.update(
            code=_run(
                photos,
                out,
                f"http://{LOOPBACK}:{port}",
                extra=["--concurrency", "1", "--retries", "6", "--backoff", "0.5"],
            )
        )
    )
    client.start()  # nothing listens on the port yet: refused
    time.sleep(1.0)
    target, busy = server.url, {"left": 6}

    class Restarted(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if busy["left"] > 0:
                busy["left"] -= 1
                payload = b'{"error": "model is loading; retry shortly"}'
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {
                k: v for k, v in self.headers.items() if k.lower() == "inference-header-content-length"
            }
            answer = httpx.post(target + self.path, content=body, headers=headers, timeout=60)
            self.send_response(answer.status_code)
            for name in ("content-type", "inference-header-content-length"):
                self.send_header(name, answer.headers[name])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args):
            pass

    with serve_in_thread(http.server.ThreadingHTTPServer((LOOPBACK, port), Restarted)):
        client.join(120)
    assert result["code"] == 0 and busy["left"] == 0
    assert len(_rows(out)) == len(NAMES)


def test_without_the_client_requirements_it_says_what_to_install(tmp_path):
    code = "import sys\nsys.modules['pyarrow'] = None\nfrom app.client import main\nmain(sys.argv[1:])"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path),
            "--server",
            "http://127.0.0.1:9",
            "--out",
            str(tmp_path / "o.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "python -m app.client needs pyarrow, which the server's requirements do not install: "
        "pip install -r requirements-client.txt"
    )
