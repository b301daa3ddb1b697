"""A real redis-server (Debian's package; .ci/run installs it) on 127.0.0.1 and a free port,
started for a test and stopped after it: nothing on disk, nothing shared between tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager

import pytest
import redis

from tests.support import LOOPBACK, free_port


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    return binary


class RedisServer:
    def __init__(self, port: int):
        self.port = port
        self.url = f"redis://{LOOPBACK}:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=10)


@contextmanager
def redis_server():
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
