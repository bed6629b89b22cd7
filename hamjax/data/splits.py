"""Datasets cut into train, validation and test splits: the containers and the seeded cut.

:class:`Dataset` is what :func:`hamjax.fit`, :func:`hamjax.train.evaluate`
and recipes consume, whether it came from a bundled dataset
(:func:`hamjax.data.load`) or from the user's arrays
(:func:`hamjax.data.from_arrays`). :func:`split_indices` is the one cut both
use: a pure function of the labels, the split sizes and a seed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from hamjax._checks import check_number

__all__ = ["Dataset", "Split", "split_indices", "split_sizes", "stratified_counts"]

# First word of the seed sequence, so that splits and epoch orders drawn from
# the same user seed are independent streams (numpy's SeedSequence treats [s]
# and [s, 0] alike, so a tag is needed, not a trailing zero).
_SPLIT_STREAM = 0x5B11


class Split(NamedTuple):
    """One split of a dataset.

    Attributes:
      x: float32 inputs of shape ``(N, *input_shape)``; the bundled datasets
        give images ``(N, H, W, 1)`` with values in ``[0, 1]``.
      y: int32 class labels of shape ``(N,)``.

    Examples:
      >>> import numpy as np
      >>> split = Split(np.zeros((4, 8, 8, 1), np.float32), np.arange(4, dtype=np.int32))
      >>> len(split.y), split.x.shape[1:]
      (4, (8, 8, 1))
    """

    x: np.ndarray
    y: np.ndarray


class Dataset(NamedTuple):
    """A dataset cut into train, validation and test splits.

    Attributes:
      name: the name given to :func:`hamjax.data.load` or
        :func:`hamjax.data.from_arrays`.
      train: the training split.
      val: the validation split.
      test: the test split.
      num_classes: number of classes; labels are ``0 .. num_classes - 1``.
      input_shape: shape of one input, e.g. ``(H, W, 1)`` for an image.

    Examples:
      >>> import numpy as np
      >>> split = Split(np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1], np.int32))
      >>> Dataset("toy", split, split, split, num_classes=2, input_shape=(3,)).input_shape
      (3,)
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]


def _augment(row: int, up: np.ndarray, allowed: np.ndarray, column_room: np.ndarray) -> bool:
    """Rounds up one more cell of ``row`` along an alternating path (b-matching)."""
    reached_column: dict[int, int] = {}
    reached_row: dict[int, int | None] = {row: None}
    frontier = deque([row])
    while frontier:
        i = frontier.popleft()
        for j in np.flatnonzero(allowed[i] & ~up[i]):
            j = int(j)
            if j in reached_column:
                continue
            reached_column[j] = i
            if column_room[j] > 0:
                column_room[j] -= 1
                while True:
                    i = reached_column[j]
                    up[i, j] = True
                    previous = reached_row[i]
                    if previous is None:
                        return True
                    up[i, previous] = False
                    j = previous
            for k in np.flatnonzero(up[:, j]):
                if int(k) not in reached_row:
                    reached_row[int(k)] = j
                    frontier.append(int(k))
    return False


def stratified_counts(class_sizes: np.ndarray, split_sizes: np.ndarray) -> np.ndarray:
    """How many examples of each class go to each split.

    Controlled rounding of the proportional shares ``class_sizes[c] *
    split_sizes[s] / N``: every count is its share rounded down or up, rows
    sum to ``class_sizes`` and columns to ``split_sizes``. Such a rounding
    always exists; it is found by augmenting paths.

    Args:
      class_sizes: int array ``(C,)``.
      split_sizes: int array ``(S,)`` with the same total as ``class_sizes``.

    Returns:
      int64 array ``(C, S)``.

    Examples:
      >>> stratified_counts(np.array([5, 5]), np.array([6, 2, 2])).tolist()
      [[3, 1, 1], [3, 1, 1]]
    """
    class_sizes, split_sizes = np.asarray(class_sizes, np.int64), np.asarray(split_sizes, np.int64)
    total = int(class_sizes.sum())
    numerators = np.outer(class_sizes, split_sizes)
    counts = numerators // total
    allowed = numerators % total != 0
    column_room = split_sizes - counts.sum(axis=0)
    up = np.zeros_like(allowed)
    for row, need in enumerate(class_sizes - counts.sum(axis=1)):
        for _ in range(int(need)):
            if not _augment(row, up, allowed, column_room):
                raise RuntimeError("stratified rounding failed; this is a bug in hamjax.data")
    return counts + up


def split_sizes(where: str, n: int, fractions: Mapping[str, float]) -> np.ndarray:
    """Checks held-out fractions and returns the sizes ``(train, *held_out)`` for ``n`` examples.

    Each held-out split takes ``round(n * fraction)`` examples and training
    keeps the rest; every split must end up non-empty.

    Args:
      where: the caller label for errors (e.g. ``"load"``).
      n: number of examples to cut.
      fractions: ``{argument name: fraction}`` of the held-out splits, in
        order; each fraction lies in ``(0, 1)`` and together they sum to
        less than 1.

    Returns:
      int64 array of ``1 + len(fractions)`` sizes summing to ``n``.

    Raises:
      ValueError: naming the fraction that is out of range or leaves a
        split empty.

    Examples:
      >>> split_sizes("load", 100, {"val_fraction": 0.1, "test_fraction": 0.2}).tolist()
      [70, 10, 20]
    """
    values = {
        arg: check_number(where, arg, value, minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
        for arg, value in fractions.items()
    }
    args, total = " + ".join(values), sum(values.values())
    if len(values) > 1 and total >= 1.0:
        shown = " + ".join(f"{arg}={fractions[arg]!r}" for arg in values)
        raise ValueError(f"{where}: {args} must be < 1 to leave training data, got {shown} = {total!r}")
    held_out = [round(n * value) for value in values.values()]
    sizes = np.array([n - sum(held_out), *held_out], np.int64)
    train_value = total if len(values) > 1 else next(iter(values.values()), 0.0)
    checks = [(args, train_value, sizes[0]), *zip(values, values.values(), held_out, strict=True)]
    for arg, value, size in checks:
        if size < 1:
            raise ValueError(f"{where}: {arg}={value!r} leaves an empty split of the {n} examples")
    return sizes


def split_indices(y: np.ndarray, sizes: np.ndarray, *, seed: int, stratify: bool = True) -> list[np.ndarray]:
    """Cuts ``range(len(y))`` into shuffled parts of the given sizes, as a pure function of ``seed``.

    With ``stratify`` each class is shuffled and cut so that every part holds
    its proportional share of every class, within one example
    (:func:`stratified_counts`); otherwise one permutation is cut in order.
    The rows within each part are shuffled too.

    Args:
      y: int labels ``(N,)``.
      sizes: int sizes of the parts, summing to ``N`` (see :func:`split_sizes`).
      seed: non-negative integer that fixes the cut.
      stratify: keep class shares equal across the parts.

    Returns:
      One int64 index array per part; together they are a permutation of
      ``0 .. N - 1``.

    Examples:
      >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
      >>> parts = split_indices(y, np.array([4, 4]), seed=0)
      >>> [np.bincount(y[p]).tolist() for p in parts]
      [[2, 2], [2, 2]]
    """
    sizes = np.asarray(sizes, np.int64)
    rng = np.random.default_rng([_SPLIT_STREAM, seed])
    if not stratify:
        order = rng.permutation(len(y))
        return list(np.split(order, np.cumsum(sizes)[:-1]))
    classes, class_sizes = np.unique(y, return_counts=True)
    counts = stratified_counts(class_sizes, sizes)
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    for label, row in zip(classes, counts, strict=True):
        members = rng.permutation(np.flatnonzero(y == label))
        for s, part in enumerate(np.split(members, np.cumsum(row)[:-1])):
            parts[s].append(part)
    return [rng.permutation(np.concatenate(part)) for part in parts]
