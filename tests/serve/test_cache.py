import threading

import numpy as np
import pytest

from hamjax.serve.cache import ResponseCache, cache_key


def test_the_key_depends_on_version_dtype_shape_and_every_byte():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = cache_key("v1", x)
    assert base == cache_key("v1", x.copy())
    assert base == cache_key("v1", np.asfortranarray(x))  # the same values, another memory layout
    flipped = x.copy()
    flipped.view(np.uint32)[1, 2] ^= 1  # one bit
    others = [
        cache_key("v2", x),
        cache_key("v1", x.astype(np.float64)),
        cache_key("v1", x.reshape(3, 2)),
        cache_key("v1", flipped),
    ]
    assert base not in others and len(set(others)) == 4


def test_least_recently_used_entries_go_first():
    cache = ResponseCache(2)
    cache.put("a", np.array([1]))
    cache.put("b", np.array([2]))
    assert cache.get("a").tolist() == [1]  # a is now the most recent
    cache.put("c", np.array([3]))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert (len(cache), cache.hits, cache.misses) == (2, 3, 1)


def test_stored_outputs_are_private_read_only_copies():
    cache = ResponseCache(1)
    y = np.array([1.0, 2.0])
    cache.put("k", y)
    y[0] = 99.0
    stored = cache.get("k")
    assert stored.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        stored[0] = 5.0


def test_concurrent_use_keeps_the_bound():
    cache = ResponseCache(8)

    def work(offset):
        for i in range(500):
            cache.put(f"{offset}-{i % 20}", np.array([i]))
            cache.get(f"{offset}-{(i * 7) % 20}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 8 and cache.hits + cache.misses == 2000


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        ResponseCache(0)
