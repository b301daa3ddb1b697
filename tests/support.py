"""Test support: a real uvicorn server in a thread, a static HTTP server, real photos."""

from __future__ import annotations

import base64
import functools
import http.client
import http.server
import io
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

from app.server import create_app
from app.settings import Settings

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, settings: Settings, server: uvicorn.Server, app):
        self.settings = settings
        self.server = server
        self.app = app
        self.url = f"http://{LOOPBACK}:{settings.port}"
        self.host_port = f"{LOOPBACK}:{settings.port}"
        self.model = settings.served_model_name
        self.grpc_target = f"{LOOPBACK}:{settings.grpc_port}" if settings.grpc_port else None

    @property
    def served(self):
        """The ServedModel behind the server's model name."""
        return self.app.state.models.get(self.model)

    def infer_url(self, model: str | None = None) -> str:
        return f"{self.url}/v2/models/{model or self.model}/infer"


@contextmanager
def run_server(settings: Settings, wait_ready: bool = True, timeout_s: float = 120, **app_kwargs):
    """The real app under uvicorn on 127.0.0.1; stopped when the block ends."""
    app = create_app(settings, **app_kwargs)
    # The asyncio loop (not uvloop): its sockets pass through socket.connect, where the
    # security tests' tripwire watches every connection attempt.
    config = uvicorn.Config(
        app, host=LOOPBACK, port=settings.port, log_config=None, access_log=False, loop="asyncio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = RunningServer(settings, server, app)
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        while wait_ready:
            status = httpx.get(f"{running.url}/v2/health/ready").status_code
            if status == 200:
                break
            if app.state.models.broken:
                errors = [model.load_error for model in app.state.models if model.load_error]
                raise RuntimeError(f"model failed to load: {errors}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.05)
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def backend_settings(model: Path | str, cache: Path, **overrides) -> Settings:
    """Settings for loading a backend in the test process: the model folder, CPU, torch
    (or the runtime asked for), exports cached under `cache`."""
    values = dict(
        model_id=str(model),
        model_dir="/nonexistent",
        model_cache_dir=cache,
        device="cpu",
        max_batch_size=4,
        runtime="torch",
        openvino_hint="throughput",
    )
    return Settings(**(values | overrides))


def server_settings(model_path: Path | str | None, tmp_dir: Path, **overrides) -> Settings:
    """Settings for a test server: loopback, a free port, no /mnt/models lookup."""
    values = dict(
        model_id=str(model_path) if model_path else None,
        model_dir=tmp_dir / "no-mounted-model",
        host=LOOPBACK,
        port=free_port(),
        device="cpu",
        allow_private_urls=True,  # the test image servers listen on 127.0.0.1
        grpc_port=0,  # gRPC tests ask for a port of their own (grpc_port=free_port())
        # RUNTIME=auto measures torch and OpenVINO at start-up (seconds per model): the tests
        # of that (tests/embedding/test_auto_runtime.py, the README's) ask for it.
        runtime="torch",
        openvino_hint="throughput",
    )
    values.update(overrides)
    return Settings(**values)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextmanager
def static_server(folder: Path):
    """A real HTTP server on 127.0.0.1 serving the files of `folder`."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with serve_in_thread(http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)) as url:
        yield url


@contextmanager
def serve_in_thread(httpd: http.server.HTTPServer):
    """Run `httpd` (bound to 127.0.0.1) in a thread; its URL while the block runs."""
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


PHOTO_NAMES = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "camera",
    "moon",
    "brick",
    "grass",
    "clock",
    "coins",
)


def photo_folder(folder: Path, size: tuple[int, int]) -> Path:
    """skimage's ten photos as JPEGs of `size`, alternately in sub-folders a/ and b/."""
    for i, name in enumerate(PHOTO_NAMES):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"{name}.jpg").write_bytes(encode(photo(name).resize(size)))
    return folder


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def image_request(images: list[str], **flags) -> dict:
    inputs = [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": images}]
    for name, value in flags.items():
        inputs.append({"name": name, "shape": [1], "datatype": "BYTES", "data": [value]})
    return {"inputs": inputs}


def scrape(server) -> dict:
    """{(name, frozenset(labels)): value} of every sample of a server's /metrics (a server
    in a thread, or an app_process: anything with a `url`)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def embeddings_of(response: httpx.Response) -> np.ndarray:
    """The embeddings in the original service's `output` JSON string."""
    import json

    header = response.content
    length = response.headers.get("inference-header-content-length")
    if length is not None:
        header = header[: int(length)]
    output = next(o for o in json.loads(header)["outputs"] if o["name"] == "output")
    document = json.loads(output["data"][0])
    return np.asarray(document["embeddings"], dtype=np.float32)


@contextmanager
def slow_server(delay_s: float, body: bytes = b"", content_type: str = "image/jpeg", started=None):
    """An HTTP server on 127.0.0.1 that waits `delay_s` before answering every GET; sets the
    `started` event (a threading.Event) as each GET arrives."""

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if started is not None:
                started.set()
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with serve_in_thread(http.server.ThreadingHTTPServer((LOOPBACK, 0), Slow)) as url:
        yield url


@contextmanager
def app_process(model_path: Path | None, tmp_dir: Path, *flags: str, stderr=None):
    """`python -m app` as a real process on 127.0.0.1, ready; killed if still running after.
    Without model_path the flags name the models (--model-repository)."""
    import os
    import subprocess
    import sys

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "app",
        *(["--model-id", str(model_path)] if model_path else []),
        "--model-dir",
        str(tmp_dir),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--allow-private-urls",
        "true",
        *([] if "--grpc-port" in flags else ["--grpc-port", "0"]),
        *([] if "--runtime" in flags else ["--runtime", "torch"]),  # see server_settings
        *([] if "--openvino-hint" in flags else ["--openvino-hint", "throughput"]),
        *flags,
    ]
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=root, env=env | {"HF_HUB_OFFLINE": "1"}, stderr=stderr, text=True)
    process.url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{process.url}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server process did not become ready")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def kserve_calls(*args: str) -> dict:
    """tests/conformance/kserve_calls.py (the kserve SDK's clients) in a process of its own,
    since kserve and tritonclient.grpc cannot share one; what its calls returned."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "tests.conformance.kserve_calls", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


class Memory:
    """Peak resident memory of a process, from the kernel's own high-water mark."""

    def __init__(self, pid: int):
        self.pid = pid

    def _kib(self, field: str) -> int:
        text = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))

    def reset(self) -> int:
        """Sets VmHWM to the current RSS (clear_refs 5) and returns that RSS, in KiB."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self._kib("VmRSS")

    def growth_mib(self, baseline_kib: int) -> float:
        return (self._kib("VmHWM") - baseline_kib) / 1024


class KeepAlive:
    """One HTTP/1.1 connection that is never silently reopened: if the server drops it,
    the next request fails (http.client's auto_open is off)."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
        self.connection.connect()
        self.connection.auto_open = 0

    def send(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        headers = {"Content-Type": "application/json", **(headers or {})}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())

    def close(self):
        self.connection.close()
