"""The docs page in a real browser, offline: Debian's Chromium, headless, loads /docs from a
live server on 127.0.0.1 with every other host name unresolvable; Swagger UI 5 (from the
fastapi-offline wheel, no CDN) must render the infer operation, and the page must request
nothing but 127.0.0.1. The first example payload works as it is against the default model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from app.api.examples import INFER_EXAMPLES
from tests.support import embeddings_of, run_server, server_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Off the network but for loopback, and none of Chromium's own background traffic.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def default_server(default_model_cache, tmp_path_factory):
    settings = server_settings(None, tmp_path_factory.mktemp("docs"), model_cache_dir=default_model_cache)
    with run_server(settings) as server:
        yield server


def _chromium(url: str, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for (its network isolation key is the page's site), as opposed
    to Chromium's own background requests, which the resolver rules leave unresolved."""
    log = json.loads(net_log.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) == "URL_REQUEST_START_JOB" and str(
            params.get("network_isolation_key")
        ).startswith("http://127.0.0.1"):
            urls.append(params["url"])
    return urls


def test_swagger_ui_renders_offline_and_requests_only_loopback(default_server):
    folder = Path(tempfile.mkdtemp(prefix="docs-browser-"))  # kept: the screenshot is CI's artefact
    url = f"{default_server.url}/docs"
    dumped = _chromium(
        url, folder, "--virtual-time-budget=20000", f"--log-net-log={folder / 'net.json'}", "--dump-dom"
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    assert "/v2/models/{model_name}/infer" in dom  # Swagger UI rendered the operations
    assert "opblock" in dom and "Unable to render" not in dom
    requested = _page_requests(folder / "net.json")
    assert any(u.endswith("/swagger-ui-bundle.js") for u in requested), requested
    assert any(u.endswith("/openapi.json") for u in requested)
    assert any(u.endswith("/favicon.png") for u in requested)
    assert all(u.startswith(default_server.url + "/") for u in requested), requested
    shot = _chromium(
        url,
        folder,
        "--virtual-time-budget=20000",
        "--window-size=1280,1800",
        f"--screenshot={folder / 'docs.png'}",
    )
    assert shot.returncode == 0 and (folder / "docs.png").stat().st_size > 10_000
    print(f"screenshot: {folder / 'docs.png'}")


def test_the_docs_assets_come_from_the_server(default_server):
    page = httpx.get(f"{default_server.url}/docs").text
    assert "cdn" not in page.lower() and "/static-offline-docs/swagger-ui-bundle.js" in page
    bundle = httpx.get(f"{default_server.url}/static-offline-docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 1_000_000
    assert httpx.get(f"{default_server.url}/redoc").status_code == 200


def test_the_first_example_returns_an_embedding_from_the_default_model(default_server):
    name, example = next(iter(INFER_EXAMPLES.items()))
    assert name == "inline_photo"
    response = httpx.post(default_server.infer_url(), json=example["value"], timeout=60)
    assert response.status_code == 200, response.text
    embedding = embeddings_of(response)
    assert embedding.shape == (1, 1280) and abs(float((embedding**2).sum()) - 1) < 1e-4
