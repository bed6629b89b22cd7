"""Tests for hamjax.data.splits: stratified rounding, split sizes and the seeded cut."""

import numpy as np
import pytest

from hamjax import data


@pytest.mark.parametrize(
    ("class_sizes", "sizes"),
    [([5, 5], [6, 2, 2]), ([1, 2, 3, 7], [9, 2, 2]), ([500] * 10, [3500, 500, 1000]), ([3, 1], [2, 2])],
)
def test_stratified_counts_round_every_share_and_keep_the_margins(class_sizes, sizes):
    class_sizes, sizes = np.array(class_sizes), np.array(sizes)
    counts = data.stratified_counts(class_sizes, sizes)
    np.testing.assert_array_equal(counts.sum(axis=1), class_sizes)
    np.testing.assert_array_equal(counts.sum(axis=0), sizes)
    share = np.outer(class_sizes, sizes) / class_sizes.sum()
    assert np.all(counts >= np.floor(share)) and np.all(counts <= np.ceil(share))


def test_split_sizes_round_each_fraction_and_leave_the_rest_to_training():
    np.testing.assert_array_equal(data.split_sizes("f", 1797, {"a": 0.1, "b": 0.2}), [1258, 180, 359])
    np.testing.assert_array_equal(data.split_sizes("f", 10, {"b": 0.25}), [8, 2])
    np.testing.assert_array_equal(data.split_sizes("f", 10, {}), [10])


@pytest.mark.parametrize(
    ("n", "fractions", "match"),
    [
        (10, {"a": 0.0}, "f: a must be a finite number > 0 and < 1, got 0.0"),
        (10, {"a": "0.1"}, "f: a must be a finite number > 0 and < 1, got '0.1'"),
        (10, {"a": 0.6, "b": 0.4}, r"f: a \+ b must be < 1 to leave training data, got a=0.6 \+ b=0.4 = 1.0"),
        (10, {"a": 0.01}, "f: a=0.01 leaves an empty split of the 10 examples"),
        (3, {"a": 0.5, "b": 0.4}, r"f: a \+ b=0.9 leaves an empty split of the 3 examples"),
        (1, {"b": 0.6}, "f: b=0.6 leaves an empty split of the 1 examples"),
    ],
)
def test_split_sizes_name_the_fraction_at_fault(n, fractions, match):
    with pytest.raises(ValueError, match=match):
        data.split_sizes("f", n, fractions)


@pytest.mark.parametrize("stratify", [True, False])
def test_split_indices_partition_deterministically(stratify):
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    sizes = np.array([70, 10, 20])
    parts = data.split_indices(y, sizes, seed=5, stratify=stratify)
    assert [len(p) for p in parts] == [70, 10, 20]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(100))
    again = data.split_indices(y, sizes, seed=5, stratify=stratify)
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = data.split_indices(y, sizes, seed=6, stratify=stratify)
    assert not np.array_equal(parts[2], other[2])
    if stratify:
        for part in parts:
            share = np.array([10, 20, 30, 40]) * len(part) / 100
            assert np.all(np.abs(np.bincount(y[part], minlength=4) - share) <= 1)


def test_unstratified_cut_is_one_permutation_in_order():
    y = np.zeros(10, np.int64)
    parts = data.split_indices(y, np.array([6, 4]), seed=0, stratify=False)
    assert len(parts[0]) == 6 and len(parts[1]) == 4
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
