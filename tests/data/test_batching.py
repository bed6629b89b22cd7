"""Tests for hamjax.data.batching: resumable batches as a pure function of (seed, step)."""

import numpy as np
import pytest

from hamjax import data


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
