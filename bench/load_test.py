"""Load test under hostile traffic (loopback only, bounded in time and count): 64 clients
for 60 s mixing good requests, bad requests and slow URLs against the real server.

    python -m bench.load_test --clients 64 --seconds 60

Reports 5xx other than 503 (must be zero), lost and mismatched responses (must be zero),
the 503s of backpressure, and the server's memory before and after (growth under 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.server
import io
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from bench.run import ROOT, free_port, process

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def photos() -> dict[str, bytes]:
    import skimage.data
    from PIL import Image

    out = {}
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((640, 480)).save(
            buffer, "JPEG", quality=90
        )
        out[name] = buffer.getvalue()
    return out


def slow_image_server(image: bytes, delay_s: float):
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(delay_s)
            try:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server gave up on this URL (fetch timeout): expected

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def bad_bodies(image: bytes) -> list[bytes]:
    uri = "data:image/jpeg;base64," + base64.b64encode(image[:3000]).decode()
    return [
        b'{"inputs": [',
        json.dumps(
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [uri]}]}
        ).encode(),
        json.dumps(
            {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["x"]}]}
        ).encode(),
        json.dumps(
            {
                "inputs": [
                    {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["http://169.254.169.254/"]}
                ]
            }
        ).encode(),
    ]


def request(images: list[str], request_id: str) -> bytes:
    return json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": images}],
        }
    ).encode()


async def drive(url, references, uris, bad, slow_urls, clients, seconds, max_requests):
    counts = Counter()
    deadline = time.monotonic() + seconds
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client():
            while time.monotonic() < deadline and counts["sent"] < max_requests:
                counts["sent"] += 1
                kind = rng.choices(["good", "bad", "slow"], weights=[7, 2, 1])[0]
                request_id = str(uuid.uuid4())
                if kind == "good":
                    names = rng.sample(sorted(uris), rng.randint(1, 3))
                    body = request([uris[n] for n in names], request_id)
                elif kind == "bad":
                    body = rng.choice(bad)
                else:
                    names = []
                    body = request([rng.choice(slow_urls)], request_id)
                try:
                    response = await client.post(
                        url, content=body, headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError:
                    counts["lost"] += 1
                    continue
                status = response.status_code
                counts[f"{kind} {status}"] += 1
                if status == 503:
                    counts["503"] += 1
                elif status >= 500:
                    counts["5xx"] += 1
                elif kind == "good":
                    if status != 200:
                        counts["good refused"] += 1
                        continue
                    answer = response.json()
                    document = json.loads(answer["outputs"][0]["data"][0])
                    got = np.asarray(document["embeddings"], np.float32)
                    want = np.stack([references[n] for n in names])
                    if answer["id"] != request_id or not np.allclose(got, want, atol=1e-4):
                        counts["mismatched"] += 1
                elif kind == "bad" and not 400 <= status < 500:
                    counts["bad accepted"] += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "image-embed")
    args = parser.parse_args(argv)

    images = photos()
    uris = {n: "data:image/jpeg;base64," + base64.b64encode(b).decode() for n, b in images.items()}
    slow = [
        slow_image_server(images["chelsea"], delay) for delay in (0.5, 3.0)
    ]  # 3 s: past the fetch timeout
    slow_urls = [f"http://127.0.0.1:{s.server_address[1]}/cat.jpg" for s in slow]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
    command = [
        sys.executable,
        "-m",
        "app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model-cache-dir",
        str(args.cache),
        "--model-dir",
        tempfile.gettempdir() + "/no-model",
        "--allow-private-urls",
        "true",
        "--fetch-timeout-s",
        "2",
        "--max-queue-images",
        "96",
        "--max-batch-size",
        "16",
    ]
    with process(command, f"{base}/v2/health/ready", env) as server:
        url = f"{base}/v2/models/mobilenet-v2/infer"
        references = {}
        for name, uri in uris.items():  # each photo alone, on the idle server: the expected answers
            answer = httpx.post(url, content=request([uri], "ref"), timeout=60).json()
            references[name] = np.asarray(
                json.loads(answer["outputs"][0]["data"][0])["embeddings"][0], np.float32
            )
        warm = asyncio.run(
            drive(url, references, uris, bad_bodies(images["coffee"]), slow_urls, args.clients, 10, 10**9)
        )
        before = rss_mib(server.pid)
        started = time.monotonic()
        counts = asyncio.run(
            drive(
                url,
                references,
                uris,
                bad_bodies(images["coffee"]),
                slow_urls,
                args.clients,
                args.seconds,
                args.max_requests,
            )
        )
        elapsed = time.monotonic() - started
        after = rss_mib(server.pid)
        healthy = httpx.get(f"{base}/v2/health/ready").status_code == 200
    for s in slow:
        s.shutdown()
    growth = (after - before) / before
    report = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": counts["sent"],
        "responses": {k: v for k, v in sorted(counts.items()) if " " in k},
        "5xx_other_than_503": counts["5xx"],
        "503_backpressure": counts["503"],
        "lost": counts["lost"],
        "mismatched": counts["mismatched"],
        "good_refused": counts["good refused"],
        "bad_accepted": counts["bad accepted"],
        "rss_mib_before": round(before, 1),
        "rss_mib_after": round(after, 1),
        "rss_growth": f"{growth:+.1%}",
        "warm_up_requests": warm["sent"],
        "healthy_after": healthy,
    }
    print(json.dumps(report, indent=2))
    ok = (
        counts["5xx"] == 0
        and counts["lost"] == 0
        and counts["mismatched"] == 0
        and counts["bad accepted"] == 0
        and growth < 0.10
        and healthy
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
