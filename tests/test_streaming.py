"""Tests for hamjax.streaming: fixed-shape chunks, bounded memory, prefetch to the device."""

import itertools
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import streaming

STREAM_THREAD = "hamjax.streaming"


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == STREAM_THREAD and t.is_alive()]


def _wait_for_no_stream_threads(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _stream_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _stream_threads()


def _reassemble(chunks):
    return jax.tree.map(
        lambda *a: np.concatenate(a), *[jax.tree.map(lambda a, c=c: np.asarray(a)[: c.valid], c.data) for c in chunks]
    )


def test_stream_array_reconstructs_source_with_zero_padding():
    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3) + 1.0
    chunks = list(streaming.stream(x, 64))
    assert len(chunks) == 16
    assert [c.valid for c in chunks] == [64] * 15 + [40]
    for chunk in chunks:
        assert isinstance(chunk.data, jax.Array)
        assert chunk.data.shape == (64, 3)
        assert chunk.data.dtype == jnp.float32
    np.testing.assert_array_equal(_reassemble(chunks), x)
    np.testing.assert_array_equal(np.asarray(chunks[-1].data)[40:], 0.0)
    assert _wait_for_no_stream_threads()


def test_stream_pytree_source():
    source = {"x": np.arange(50 * 2, dtype=np.float32).reshape(50, 2), "y": np.arange(50, dtype=np.int32)}
    chunks = list(streaming.stream(source, 16, prefetch=1))
    assert [c.valid for c in chunks] == [16, 16, 16, 2]
    assert all(c.data["x"].shape == (16, 2) and c.data["y"].shape == (16,) for c in chunks)
    out = _reassemble(chunks)
    np.testing.assert_array_equal(out["x"], source["x"])
    np.testing.assert_array_equal(out["y"], source["y"])


def test_stream_generator_of_uneven_pieces():
    sizes = [0, 1, 7, 100, 3, 64, 65, 2, 0, 31]
    total = sum(sizes)
    x = np.random.default_rng(0).normal(size=(total, 5)).astype(np.float32)
    y = np.arange(total, dtype=np.int32)
    bounds = np.cumsum([0, *sizes])

    def pieces():
        for start, stop in itertools.pairwise(bounds):
            yield x[start:stop], y[start:stop]

    chunks = list(streaming.stream(pieces(), 32, prefetch=3))
    assert [c.valid for c in chunks] == [32] * (total // 32) + [total % 32]
    assert all(c.data[0].shape == (32, 5) and c.data[1].shape == (32,) for c in chunks)
    out_x, out_y = _reassemble(chunks)
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_y, y)
    np.testing.assert_array_equal(np.asarray(chunks[-1].data[1])[total % 32 :], 0)


def test_stream_without_padding_and_list_source():
    pieces = [np.arange(5), np.arange(5, 12)]
    chunks = list(streaming.stream(pieces, 5, pad=False))
    assert [c.data.shape[0] for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([np.asarray(c.data) for c in chunks]), np.arange(12))
    assert list(streaming.stream(iter([]), 4)) == []


def test_stream_feeds_a_jitted_consumer_that_compiles_once():
    traces = []

    @jax.jit
    def masked_sum(chunk, valid):
        traces.append(None)
        return jnp.sum(jnp.where(jnp.arange(chunk.shape[0]) < valid, chunk, 0.0))

    x = np.arange(1, 301, dtype=np.float32)
    total = sum(
        float(masked_sum(c.data, c.valid)) for c in streaming.stream((x[i : i + 37] for i in range(0, 300, 37)), 64)
    )
    assert total == float(x.sum())
    assert len(traces) == 1


def test_stream_early_stop_ends_the_thread():
    def endless():
        while True:
            yield np.zeros((7, 3), np.float32)

    it = streaming.stream(endless(), 8)
    first = next(it)
    assert first.data.shape == (8, 3)
    assert len(_stream_threads()) >= 1
    it.close()
    assert _wait_for_no_stream_threads()
    for _ in streaming.stream(endless(), 8):
        break  # dropping the iterator closes it
    assert _wait_for_no_stream_threads()


def test_stream_producer_exception_reaches_the_consumer():
    def failing():
        yield np.ones((4, 2))
        yield np.ones((4, 2))
        raise RuntimeError("source broke")

    received = []
    with pytest.raises(RuntimeError, match="source broke"):
        for chunk in streaming.stream(failing(), 4):
            received.append(chunk.valid)
    assert received == [4, 4]
    assert _wait_for_no_stream_threads()


@pytest.mark.parametrize("prefetch", [1, 2, 4])
def test_stream_runs_at_most_prefetch_plus_two_chunks_ahead(prefetch):
    chunk_size, produced = 10, [0]

    def counting():
        for _ in range(60):
            produced[0] += chunk_size
            yield np.zeros((chunk_size, 2), np.float32)

    worst = 0
    for consumed, _ in enumerate(streaming.stream(counting(), chunk_size, prefetch=prefetch), start=1):
        time.sleep(0.005)  # a slow consumer lets the producer run as far ahead as it can
        worst = max(worst, produced[0] - consumed * chunk_size)
    assert consumed == 60
    assert prefetch * chunk_size <= worst <= (prefetch + 2) * chunk_size


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1, got 0"),
        ({"chunk_size": 4, "prefetch": 0}, "prefetch must be an integer >= 1, got 0"),
    ],
)
def test_stream_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        streaming.stream(np.zeros((10, 2)), **kwargs)


def test_stream_accepts_any_iterable_of_pieces():
    class Pieces:
        def __iter__(self):
            for i in range(3):
                yield np.full((5, 2), i, np.float32)

    chunks = list(streaming.stream(Pieces(), 4))
    assert [c.valid for c in chunks] == [4, 4, 4, 3]
    np.testing.assert_array_equal(_reassemble(chunks)[:, 0], np.repeat([0.0, 1.0, 2.0], 5))


def test_stream_rejects_sources_that_are_not_arrays():
    with pytest.raises(ValueError, match="stream: source must be an array or a pytree of arrays, got int"):
        streaming.stream(5, 2)
    with pytest.raises(ValueError, match="stream: source must be an array or a pytree of arrays, got dict"):
        streaming.stream({"a": np.zeros(3), "b": 3}, 2)


def test_stream_rejects_mismatched_leading_dims():
    with pytest.raises(ValueError, match=r"stream: source: every leaf needs the same leading dimension"):
        streaming.stream((np.zeros((10, 2)), np.zeros(9)), 4)
    bad_piece = iter([(np.zeros((4, 2)), np.zeros(4)), (np.zeros((3, 2)), np.zeros(2))])
    with pytest.raises(ValueError, match=r"piece 1 of source: every leaf needs the same leading dimension"):
        list(streaming.stream(bad_piece, 4))
    assert _wait_for_no_stream_threads()
