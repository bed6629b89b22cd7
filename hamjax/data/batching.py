"""Resumable batching: the batch of every training step is a pure function of ``(seed, step)``.

:func:`batch_at` returns the batch that global training step ``step`` uses,
so a run killed at any step resumes on exactly the batches it would have
seen; :func:`batches` iterates over one epoch in the same order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from hamjax._checks import check_int
from hamjax.data.splits import Split

__all__ = ["batch_at", "batch_indices", "batches", "epoch_permutation", "steps_per_epoch"]

# First word of the epoch orders' seed sequence; hamjax.data.splits tags its
# stream differently, so a split and an epoch order drawn from one seed are
# independent.
_EPOCH_STREAM = 0xE90C


def steps_per_epoch(n: int, batch_size: int, *, drop_last: bool = True) -> int:
    """Number of batches in one pass over ``n`` examples.

    Args:
      n: number of examples, >= 1.
      batch_size: examples per batch, between 1 and ``n``.
      drop_last: drop the final partial batch (``n // batch_size`` steps)
        instead of keeping it (``ceil(n / batch_size)`` steps).

    Returns:
      The number of steps, >= 1.

    Examples:
      >>> steps_per_epoch(10, 3), steps_per_epoch(10, 3, drop_last=False)
      (3, 4)
    """
    n = check_int("steps_per_epoch", "n", n, minimum=1)
    batch_size = check_int("steps_per_epoch", "batch_size", batch_size, minimum=1)
    if batch_size > n:
        raise ValueError(f"batch_size must be at most the number of examples n={n}, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


@functools.lru_cache(maxsize=16)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([_EPOCH_STREAM, seed, epoch]).permutation(n)
    order.setflags(write=False)
    return order


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` examples.

    A pure function of ``(n, seed, epoch)``: it draws from its own generator
    and never reads or advances numpy's global random state.

    Args:
      n: number of examples, >= 0.
      seed: non-negative integer.
      epoch: non-negative epoch index.

    Returns:
      int64 array ``(n,)``, a permutation of ``0 .. n - 1``.

    Examples:
      >>> p = epoch_permutation(5, seed=0, epoch=0)
      >>> sorted(p.tolist())
      [0, 1, 2, 3, 4]
    """
    args = (
        check_int("epoch_permutation", "n", n, minimum=0),
        check_int("epoch_permutation", "seed", seed, minimum=0),
        check_int("epoch_permutation", "epoch", epoch, minimum=0),
    )
    return _permutation(*args).copy()


def _split_length(split: Split) -> int:
    if len(split.x) != len(split.y):
        raise ValueError(f"split.x and split.y must have the same length, got {len(split.x)} and {len(split.y)}")
    return len(split.y)


def _order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    seed, epoch = (
        check_int("epoch_permutation", "seed", seed, minimum=0),
        check_int("epoch_permutation", "epoch", epoch, minimum=0),
    )
    return _permutation(n, seed, epoch) if shuffle else np.arange(n)


def batch_at(
    split: Split, batch_size: int, step: int, *, seed: int, shuffle: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The batch that global training step ``step`` uses.

    Step ``step`` lies in epoch ``step // steps_per_epoch(N, batch_size)`` and
    takes the next ``batch_size`` indices of that epoch's
    :func:`epoch_permutation`; the final partial batch of each epoch is
    dropped. Since nothing depends on earlier calls, a resumed run that asks
    for step ``k`` gets exactly the batch the killed run would have used.

    Args:
      split: the :class:`Split` to draw from.
      batch_size: examples per batch, between 1 and ``len(split.y)``.
      step: global step, >= 0.
      seed: non-negative integer fixing the epoch orders.
      shuffle: visit examples in permuted order; otherwise in stored order.

    Returns:
      ``(x, y)`` with leading dimension ``batch_size``.

    Examples:
      >>> import numpy as np
      >>> split = Split(np.zeros((10, 2, 2, 1), np.float32), np.arange(10, dtype=np.int32))
      >>> batch_at(split, 4, 2, seed=0, shuffle=False)[1].tolist()  # step 2 starts epoch 1
      [0, 1, 2, 3]
    """
    idx = batch_indices(_split_length(split), batch_size, step, seed=seed, shuffle=shuffle)
    return split.x[idx], split.y[idx]


def batch_indices(n: int, batch_size: int, step: int, *, seed: int, shuffle: bool = True) -> np.ndarray:
    """The indices of the examples that :func:`batch_at` takes at ``step`` from a split of ``n``.

    Args:
      n: examples in the split.
      batch_size: examples per batch, between 1 and ``n``.
      step: global step, >= 0.
      seed: non-negative integer fixing the epoch orders.
      shuffle: visit examples in permuted order; otherwise in stored order.

    Returns:
      ``(batch_size,)`` int64 indices.

    Examples:
      >>> batch_indices(10, 4, 2, seed=0, shuffle=False).tolist()
      [0, 1, 2, 3]
    """
    steps = steps_per_epoch(n, batch_size)
    epoch, position = divmod(check_int("batch_indices", "step", step, minimum=0), steps)
    return _order(n, seed, epoch, shuffle)[position * batch_size : (position + 1) * batch_size]


def batches(
    split: Split, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True, drop_last: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterates over one epoch of ``split`` in batches.

    With ``drop_last=True`` the i-th batch of epoch ``e`` equals
    ``batch_at(split, batch_size, e * steps_per_epoch(N, batch_size) + i,
    seed=seed)``. Arguments are checked when this is called, not when the
    iteration starts.

    Args:
      split: the :class:`Split` to draw from.
      batch_size: examples per batch, between 1 and ``len(split.y)``.
      seed: non-negative integer fixing the epoch order.
      epoch: which epoch's order to use, >= 0.
      shuffle: visit examples in permuted order; otherwise in stored order.
      drop_last: drop the final partial batch; otherwise yield it smaller.

    Returns:
      An iterator of ``(x, y)`` pairs.

    Examples:
      >>> import numpy as np
      >>> split = Split(np.zeros((10, 2, 2, 1), np.float32), np.arange(10, dtype=np.int32))
      >>> [len(y) for _, y in batches(split, 4, drop_last=False)]
      [4, 4, 2]
    """
    steps = steps_per_epoch(_split_length(split), batch_size, drop_last=drop_last)
    order = _order(len(split.y), seed, epoch, shuffle)
    return (
        (split.x[idx], split.y[idx]) for idx in (order[i * batch_size : (i + 1) * batch_size] for i in range(steps))
    )
