from __future__ import annotations

import pytest

from tests.cache.redis_server import redis_server


@pytest.fixture(scope="module")
def redis():
    with redis_server() as server:
        yield server
