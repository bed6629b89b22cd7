"""The user's own data: a :class:`~hamjax.data.Dataset` from numpy arrays or an ``.npz`` file.

:func:`from_arrays` checks its arguments, then every array (shapes, dtypes,
label range, NaNs), with one-line errors that name the argument and the
offending value, and only then cuts the validation and test splits it was
not given off the training arrays, as :func:`hamjax.data.load` does.
:func:`load_npz` reads the arrays from a file and hands them over.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from hamjax._checks import check_int, check_number
from hamjax.data.checks import check_labels, check_split, describe_value
from hamjax.data.splits import Dataset, Split, split_indices, split_sizes

__all__ = ["NPZ_KEYS", "from_arrays", "load_npz"]

NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")

_INT32_MAX = int(np.iinfo(np.int32).max)


def _pair(where: str, arg: str, value: Any) -> tuple[Any, Any]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"{where}: {arg} must be an (x, y) pair of arrays or None, got {describe_value(value)}")
    return value[0], value[1]


def _dataset(
    where: str,
    splits: Mapping[str, tuple[str, str, Any, Any]],
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    num_classes: int | None,
    stratify: bool,
    name: str,
) -> Dataset:
    """Checks every split's arrays, then cuts the held-out splits not in ``splits`` off ``splits["train"]``.

    ``splits`` maps ``"train"`` (required), ``"val"`` and ``"test"`` to
    ``(x_arg, y_arg, x, y)``, where ``x_arg`` and ``y_arg`` name the arrays in errors.
    """
    seed = check_int(where, "seed", seed, minimum=0)
    if num_classes is not None:
        num_classes = check_int(where, "num_classes", num_classes, minimum=1, maximum=_INT32_MAX)
    if not isinstance(stratify, bool):
        raise ValueError(f"{where}: stratify must be True or False, got {stratify!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
    fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    for arg, value in fractions.items():  # the unused one too: a bad value is a mistake either way
        check_number(where, arg, value, minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
    wanted = {f"{key}_fraction": fractions[f"{key}_fraction"] for key in ("val", "test") if key not in splits}

    checked = {}
    for key in ("train", "val", "test"):
        if key in splits:
            x_arg, y_arg, x, y = splits[key]
            checked[key] = (x_arg, y_arg, *check_split(where, x_arg, y_arg, x, y))
    train_arg, _, x_train, y_train = checked["train"]
    for x_arg, _, x, _ in checked.values():
        if x.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"{where}: {x_arg} holds inputs of shape {x.shape[1:]}, but {train_arg} holds {x_train.shape[1:]}; "
                "every split needs the same input shape"
            )
    if num_classes is None:
        top = max(int(y.max()) for *_, y in checked.values())
        if top >= _INT32_MAX:
            raise ValueError(f"{where}: labels reach {top}, beyond the int32 range; expected labels 0 .. C - 1")
        num_classes = top + 1
    for _, y_arg, _, y in checked.values():
        check_labels(where, y_arg, y, num_classes=num_classes)

    result = {key: Split(x, y.astype(np.int32)) for key, (_, _, x, y) in checked.items()}
    if wanted:
        sizes = split_sizes(where, len(y_train), wanted)
        parts = split_indices(y_train, sizes, seed=seed, stratify=stratify)
        train = result["train"]
        result["train"] = Split(train.x[parts[0]], train.y[parts[0]])
        for arg, idx in zip(wanted, parts[1:], strict=True):
            result[arg.removesuffix("_fraction")] = Split(train.x[idx], train.y[idx])
    return Dataset(
        name=name,
        train=result["train"],
        val=result["val"],
        test=result["test"],
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
    )


def from_arrays(
    x: Any,
    y: Any,
    *,
    val: tuple[Any, Any] | None = None,
    test: tuple[Any, Any] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    stratify: bool = True,
    name: str = "arrays",
) -> Dataset:
    """A :class:`~hamjax.data.Dataset` from the user's own arrays.

    The result is what :func:`hamjax.data.load` returns, so
    :func:`hamjax.fit`, :func:`hamjax.train.evaluate` and recipes take it
    unchanged. A validation or test split that is not given is cut off the
    training arrays: ``round(len(y) * fraction)`` examples, stratified by
    class (each split holds its share of every class, within one example)
    unless ``stratify=False``, shuffled as a pure function of ``seed``.
    Given splits keep their order.

    Everything is checked before anything is cut; each error is one line
    that names the argument (``val[0]`` is the ``x`` of ``val``) and the
    value at fault. Inputs are converted to float32 as they are; they are
    *not* rescaled, so scale uint8 images to ``[0, 1]`` first
    (``x / 255``), as the bundled datasets are. Labels become int32.

    Args:
      x: training inputs ``(N, *input_shape)``, at least 2 dims, real numbers
        (bool, int, uint8 or float), finite. A list of numbers is converted;
        a tuple or dict is refused.
      y: training labels ``(N,)``, integers in ``[0, num_classes)``. Float
        labels are refused, even whole ones: cast them with
        ``y.astype(np.int32)``.
      val: the validation split as an ``(x, y)`` pair, or ``None`` to cut
        ``val_fraction`` of the training arrays.
      test: the test split as an ``(x, y)`` pair, or ``None`` to cut
        ``test_fraction`` of the training arrays.
      seed: non-negative integer that fixes the cut.
      val_fraction: share of the training arrays for validation, in ``(0, 1)``.
      test_fraction: share of the training arrays for testing, in ``(0, 1)``;
        the fractions used must sum to less than 1.
      num_classes: the number of classes; ``None`` takes the largest label
        of all splits plus one.
      stratify: keep class shares equal across the cut splits.
      name: the dataset's name, for reports.

    Returns:
      A :class:`~hamjax.data.Dataset` whose inputs are float32
      ``(n, *input_shape)`` and labels int32 ``(n,)``.

    Raises:
      ValueError: for mismatched lengths, a split with no examples,
        non-numeric, non-finite or 1-D inputs, input shapes that differ
        between splits, labels that are not 1-D integers in
        ``[0, num_classes)``, a container where an array belongs, or bad
        fractions, seed or ``num_classes``.

    Examples:
      >>> import numpy as np
      >>> from hamjax import data
      >>> x = np.random.default_rng(0).random((100, 8, 8, 1), dtype=np.float32)
      >>> ds = data.from_arrays(x, np.arange(100) % 4, seed=0)
      >>> [len(s.y) for s in (ds.train, ds.val, ds.test)], ds.num_classes, ds.input_shape
      ([70, 10, 20], 4, (8, 8, 1))
      >>> data.from_arrays(x, np.arange(99) % 4)
      Traceback (most recent call last):
      ...
      ValueError: from_arrays: x and y must have the same length, got 100 and 99
    """
    where = "from_arrays"
    splits = {"train": ("x", "y", x, y)}
    for arg, pair in (("val", val), ("test", test)):
        if pair is not None:
            splits[arg] = (f"{arg}[0]", f"{arg}[1]", *_pair(where, arg, pair))
    return _dataset(
        where,
        splits,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        num_classes=num_classes,
        stratify=stratify,
        name=name,
    )


def load_npz(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    stratify: bool = True,
    name: str | None = None,
) -> Dataset:
    """A :class:`~hamjax.data.Dataset` from an ``.npz`` file of arrays.

    The file holds ``x_train`` and ``y_train`` and, optionally, the pairs
    ``x_val``, ``y_val`` and ``x_test``, ``y_test`` (:data:`NPZ_KEYS`);
    splits it lacks are cut off the training arrays as :func:`from_arrays`
    does. It is read with ``allow_pickle=False``, so it never runs code.
    Errors name the file and the arrays at fault.

    Args:
      path: the ``.npz`` file, as ``np.savez`` writes it.
      seed: as :func:`from_arrays` takes it.
      val_fraction: as :func:`from_arrays` takes it; used when the file
        has no ``x_val``.
      test_fraction: as :func:`from_arrays` takes it; used when the file
        has no ``x_test``.
      num_classes: as :func:`from_arrays` takes it.
      stratify: as :func:`from_arrays` takes it.
      name: the dataset's name; ``None`` takes the file's stem.

    Returns:
      A :class:`~hamjax.data.Dataset`.

    Raises:
      FileNotFoundError: when ``path`` does not exist.
      ValueError: when the file is not an ``.npz`` archive, holds other
        arrays than :data:`NPZ_KEYS` or half of a pair, holds Python
        objects, or when :func:`from_arrays` refuses the arrays.

    Examples:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from hamjax import data
      >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
      >>> np.savez(path, x_train=np.ones((50, 3), np.float32), y_train=np.arange(50) % 2)
      >>> ds = data.load_npz(path, seed=1)
      >>> ds.name, [len(s.y) for s in (ds.train, ds.val, ds.test)]
      ('toy', [35, 5, 10])
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_npz: no file {str(path)!r}")
    where = f"load_npz: {path}"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{where} is not an .npz archive of arrays ({type(err).__name__}: {err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{where} holds a single array (.npy); expected an .npz archive with {', '.join(NPZ_KEYS)}")
    with archive:
        found = sorted(archive.files)
        expected = f"expected x_train, y_train and optionally x_val, y_val, x_test, y_test (found {found})"
        unknown = sorted(set(found) - set(NPZ_KEYS))
        if unknown:
            raise ValueError(f"{where} holds arrays {unknown} that hamjax does not read; {expected}")
        for x_key, y_key in (("x_train", "y_train"), ("x_val", "y_val"), ("x_test", "y_test")):
            if (x_key in found) != (y_key in found) or (x_key == "x_train" and x_key not in found):
                missing = [k for k in (x_key, y_key) if k not in found]
                raise ValueError(f"{where} lacks {', '.join(missing)}; {expected}")
        arrays = {}
        for key in found:
            try:
                arrays[key] = archive[key]
            except ValueError as err:  # object arrays need pickle, which stays off
                raise ValueError(
                    f"{where}: array {key!r} cannot be read without pickle ({err}); save numbers"
                ) from None
    splits = {
        split: (f"x_{split}", f"y_{split}", arrays[f"x_{split}"], arrays[f"y_{split}"])
        for split in ("train", "val", "test")
        if f"x_{split}" in arrays
    }
    return _dataset(
        where,
        splits,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        num_classes=num_classes,
        stratify=stratify,
        name=path.stem if name is None else name,
    )
