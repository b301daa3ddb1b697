"""A real redis-server (Debian's package; .ci/run installs it) on 127.0.0.1 and a free port,
started for a test and stopped after it: nothing on disk, nothing shared between tests."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

from bench.redis_server import RedisServer
from tests.support import free_port


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    return binary


def new_redis_server() -> RedisServer:
    return RedisServer(redis_binary(), free_port())


@contextmanager
def redis_server():
    server = new_redis_server()
    server.start()
    try:
        yield server
    finally:
        server.kill()
