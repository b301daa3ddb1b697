"""The cache's parts on their own: keys, the bounded LRU (its memory measured), the shared
tier's entry format, and what a waiter does when the request it waited for gives up."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil

import numpy as np

from app.cache.embedding_cache import EmbeddingCache, Pending
from app.cache.keys import entry_key, model_identity
from app.cache.local import LocalCache, entry_bytes
from app.cache.shared import decode_entry, encode_entry
from app.embedding.backend import IMAGE, TEXT
from app.embedding.pooling import PoolingStrategy
from app.inference.stats import ModelStatistics
from app.metrics import ServiceMetrics
from app.settings.model import ModelSettings
from app.settings.server import ServerSettings
from tests.support import Memory

TORCH = {"platform": "pytorch_transformers", "family": "dinov2", "device": "cpu", "dtype": "float32"}


def test_the_key_covers_what_changes_the_answer(tiny_models, tmp_path):
    settings = ModelSettings(model_id=str(tiny_models["dinov2"]))
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["dinov2"], folder)
    base = model_identity(settings, folder, TORCH)
    assert model_identity(settings, folder, dict(TORCH)) == base  # the same model: the same identity
    int8 = dict(TORCH, platform="openvino", dtype="int8")
    assert model_identity(settings, folder, int8) != base
    assert model_identity(settings, folder, dict(TORCH, dtype="bfloat16")) != base
    slow = ModelSettings(model_id=str(folder), fast_preprocessing=False)
    assert model_identity(slow, folder, TORCH) != base
    config = folder / "config.json"
    config.write_text(config.read_text() + " ")
    assert model_identity(settings, folder, TORCH) != base  # one changed byte in one file

    content = b"\x01" * 32
    key = entry_key(base, IMAGE, content, PoolingStrategy.CLS)
    assert len(key) == 32
    others = {
        entry_key(base, IMAGE, content, PoolingStrategy.MEAN),
        entry_key(base, TEXT, content, PoolingStrategy.CLS),
        entry_key(base, IMAGE, b"\x02" * 32, PoolingStrategy.CLS),
        entry_key(model_identity(settings, folder, int8), IMAGE, content, PoolingStrategy.CLS),
    }
    assert key not in others and len(others) == 4


def test_the_local_tier_is_an_lru_bounded_in_bytes():
    evicted = []
    cache = LocalCache(10 * entry_bytes(np.zeros(8, np.float32)), lambda model, size: evicted.append(model))
    vectors = {bytes([i]) * 32: np.full(8, i, np.float32) for i in range(12)}
    for key, vector in list(vectors.items())[:10]:
        cache.put(key, vector, "m")
    assert cache.get(bytes([0]) * 32) is not None  # used: now the most recent
    for key, vector in list(vectors.items())[10:]:
        cache.put(key, vector, "m")
    assert len(cache) == 10 and evicted == ["m", "m"] and cache.bytes <= cache.max_bytes
    assert cache.get(bytes([0]) * 32) is not None  # kept: recently used
    assert cache.get(bytes([1]) * 32) is None and cache.get(bytes([2]) * 32) is None  # the oldest went
    assert cache.put(b"x" * 32, np.zeros(10_000, np.float32), "m") == 0  # larger than the whole cache
    cache.put(b"y" * 32, np.zeros(8, np.float32), "other")
    freed = cache.drop_model("m")
    assert freed > 0 and len(cache) == 1 and cache.bytes == entry_bytes(np.zeros(8, np.float32))


def test_the_local_tier_holds_its_memory_bound_under_a_stream_of_distinct_entries():
    """160 MiB of distinct 16 KiB embeddings through a 32 MiB cache: the process's resident
    memory grows by about the bound, not by the stream."""
    bound = 32 * 1024 * 1024
    cache = LocalCache(bound)
    gc.collect()
    memory = Memory(os.getpid())
    baseline = memory.reset()
    rng = np.random.default_rng(0)
    for index in range(10_000):
        cache.put(index.to_bytes(32, "little"), rng.random(4096, dtype=np.float32), "m")
    assert cache.bytes <= bound
    assert memory.growth_mib(baseline) < 32 + 16  # the bound, plus the allocator's slack


def test_shared_entries_are_checked_before_they_are_trusted():
    vector = np.arange(6, dtype=np.float32)
    stored = encode_entry(vector)
    np.testing.assert_array_equal(decode_entry(stored, 6), vector)
    for damaged in (
        None,
        b"",
        stored[:-1],
        stored + b"\0\0\0\0",
        b"XXXX" + stored[4:],
        encode_entry(np.arange(5, dtype=np.float32)) + b"\0\0\0\0",  # right length, another dimension
        encode_entry(np.array([1, np.nan, 0, 0, 0, 0], np.float32)),
    ):
        assert decode_entry(damaged, 6) is None
    assert decode_entry(encode_entry(vector), 5) is None


def test_a_waiter_computes_the_input_itself_when_its_owner_gives_up():
    async def scenario():
        cache = EmbeddingCache(ServerSettings(cache_bytes=1024 * 1024), ServiceMetrics())
        stats = ModelStatistics("m", "1")

        def session():
            return cache.session("m", "identity", IMAGE, PoolingStrategy.CLS, 4, stats)

        owner, waiter, late = session(), session(), session()
        digest = b"\x07" * 32
        assert await owner.consult(0, digest) is None  # the owner computes it
        pending = await waiter.consult(0, digest)
        assert isinstance(pending, Pending)
        owner.close()  # failed or cancelled before publishing
        assert await pending.result() is None  # so the waiter computes it
        assert await late.consult(0, digest) is None  # nothing was stored: a later request owns it
        late.publish([0], np.ones((1, 4), np.float32))
        late.close()
        again = await session().consult(0, digest)
        np.testing.assert_array_equal(again, np.ones(4, np.float32))
        assert stats.cache_hit.count == 1 and stats.cache_miss.count == 2

    asyncio.run(scenario())
