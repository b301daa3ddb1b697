"""A real redis-server on 127.0.0.1 (Debian's package), for bench.cache and the cache's
tests: nothing on disk, stopped by whoever started it."""

from __future__ import annotations

import subprocess
import time

import redis

LOOPBACK = "127.0.0.1"


class RedisServer:
    def __init__(self, binary: str, port: int):
        self.binary = binary
        self.port = port
        self.url = f"redis://{LOOPBACK}:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it answers PING (it can be started again after kill())."""
        self.process = subprocess.Popen(
            [
                self.binary,
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
