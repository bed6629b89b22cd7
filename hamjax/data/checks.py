"""Checks on the user's data, shared by :func:`~hamjax.data.from_arrays`, :func:`hamjax.fit` and evaluation.

Each check is one pass over numpy arrays, made once per call before anything
is compiled, and raises a one-line ``ValueError`` that names the caller, the
array (``dataset.val.x``, ``y``) and the value at fault. The generic checks
(integers, finiteness) come from :mod:`hamjax._checks`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_finite
from hamjax.data.splits import Dataset, Split

__all__ = ["UnscaledInputsWarning", "check_dataset", "check_inputs", "check_labels", "check_split", "describe_value"]


class UnscaledInputsWarning(UserWarning):
    """Inputs that look like raw pixel values (whole numbers up to 255) rather than scaled ones.

    Models train badly on them (a first loss in the tens, not near
    ``log(classes)``); divide by 255 or standardise first. A model that
    scales its inputs itself can silence this with
    ``warnings.filterwarnings("ignore", category=UnscaledInputsWarning)``.
    """


def _unscaled(a: np.ndarray, x: np.ndarray) -> float | None:
    """The largest value when ``a`` looks like unscaled pixels: uint8 above 1, or image-shaped whole numbers in [0, 255]."""
    if a.size == 0 or a.dtype == bool:
        return None
    if a.dtype == np.uint8 or a.ndim >= 3:
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and 1 < hi <= 255 and (a.dtype == np.uint8 or bool(np.all(x == np.floor(x)))):
            return hi
    return None


def describe_value(value: Any) -> str:
    """A short description of a value that is not what was expected, for error messages.

    Args:
      value: anything.

    Returns:
      ``"a dict with keys [...]"``, ``"a tuple of 2 items"``, ``"str 'x'"`` or the type's name.

    Examples:
      >>> describe_value({"x": 1, "y": 2}), describe_value((1, 2))
      ("a dict with keys ['x', 'y']", 'a tuple of 2 items')
    """
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"{type(value).__name__} {value!r}" if isinstance(value, str | bytes) else type(value).__name__


def _array(where: str, arg: str, value: Any) -> np.ndarray:
    """``value`` as a numpy array; containers that are not arrays are refused, lists converted."""
    if value is None or isinstance(value, Mapping | tuple | str | bytes | set):
        hint = "; the (x, y) pairs go to val= and test=" if isinstance(value, tuple) else ""
        raise ValueError(f"{where}: {arg} must be an array, got {describe_value(value)}{hint}")
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:  # a ragged list, or an object numpy cannot hold
        raise ValueError(
            f"{where}: {arg} must be an array, got {describe_value(value)} that numpy cannot stack ({err})"
        ) from None


def check_inputs(where: str, arg: str, value: Any, *, copy: bool = True) -> np.ndarray:
    """Checked float32 inputs ``(N, *input_shape)``: real numbers, at least 2 dims, finite.

    Inputs that look like raw pixels (uint8 above 1, or image-shaped whole
    numbers in [0, 255]) pass with an :class:`UnscaledInputsWarning`.

    Args:
      where: the caller label.
      arg: the array's name in errors.
      value: an array or a list of numbers.
      copy: always copy; ``False`` returns ``value`` itself when it is a float32 array already.

    Returns:
      The inputs as a float32 numpy array.

    Examples:
      >>> import numpy as np
      >>> check_inputs("fit", "dataset.train.x", np.ones((2, 3))).dtype
      dtype('float32')
      >>> check_inputs("fit", "dataset.train.x", np.array([[1.0, np.nan]]))
      Traceback (most recent call last):
      ...
      ValueError: fit: dataset.train.x holds 1 non-finite values (NaN or inf) of 2; expected finite
    """
    a = _array(where, arg, value)
    if a.dtype == object or not (jnp.issubdtype(a.dtype, jnp.number) or a.dtype == bool):
        raise ValueError(f"{where}: {arg} must hold numbers, got an array of dtype {a.dtype}")
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
        raise ValueError(f"{where}: {arg} must hold real numbers, got an array of dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(
            f"{where}: {arg} must have at least 2 dims (examples, *input_shape), got shape {a.shape}; "
            "for one feature per example pass x[:, None]"
        )
    if 0 in a.shape[1:]:
        raise ValueError(f"{where}: {arg} has shape {a.shape}, whose input shape {a.shape[1:]} holds nothing")
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, with what caused it
        x = a.astype(np.float32, copy=copy)
    if not np.isfinite(x).all():
        wide = a.astype(np.float64)  # every float dtype numpy and ml_dtypes hold, bfloat16 included
        check_finite(where, arg, wide)
        big = float(np.max(np.abs(wide)))
        raise ValueError(f"{where}: {arg} holds values beyond the float32 range (largest magnitude {big:g})")
    hi = _unscaled(a, x)
    if hi is not None:
        warnings.warn(
            f"{where}: {arg} looks like unscaled pixel values (whole numbers in [0, {hi:g}], dtype {a.dtype}); "
            "models train badly on them: scale first, e.g. x.astype('float32') / 255",
            UnscaledInputsWarning,
            stacklevel=3,
        )
    return x


def check_labels(where: str, arg: str, value: Any, *, num_classes: int | None = None, of: str = "") -> np.ndarray:
    """Checked integer class labels ``(N,)``: 1-D, an integer dtype, ``>= 0`` and ``< num_classes``.

    Args:
      where: the caller label.
      arg: the array's name in errors.
      value: an array or a list of labels.
      num_classes: the exclusive upper bound; ``None`` checks only ``>= 0``.
      of: where ``num_classes`` comes from, for the error (default ``"num_classes=C"``).

    Returns:
      The labels as a numpy array (not copied).

    Examples:
      >>> import numpy as np
      >>> check_labels("fit", "dataset.train.y", np.array([0, 2, 1]), num_classes=3).tolist()
      [0, 2, 1]
      >>> check_labels("fit", "dataset.train.y", np.array([0, 3]), num_classes=3)
      Traceback (most recent call last):
      ...
      ValueError: fit: dataset.train.y holds label 3 at index 1; expected labels in [0, 3) for num_classes=3
    """
    a = _array(where, arg, value)
    if a.ndim != 1:
        hint = "; for one-hot labels pass y.argmax(axis=1)" if a.ndim == 2 and a.shape[1] > 1 else ""
        raise ValueError(f"{where}: {arg} must be 1-D class labels (examples,), got shape {a.shape}{hint}")
    if a.dtype == bool or not jnp.issubdtype(a.dtype, jnp.integer):
        if jnp.issubdtype(a.dtype, jnp.floating):
            finite = a[np.isfinite(a)]
            fractional = finite[finite != np.round(finite)]
            if finite.size == a.size and fractional.size == 0:
                raise ValueError(
                    f"{where}: {arg} must hold integer class labels, got dtype {a.dtype} (whole numbers); "
                    f"cast them with {arg.rsplit('.', 1)[-1]}.astype(np.int32)"
                )
            example = fractional[0] if fractional.size else a[~np.isfinite(a)][0]
            raise ValueError(
                f"{where}: {arg} must hold integer class labels, got dtype {a.dtype} with values such as {float(example)!r}"
            )
        raise ValueError(f"{where}: {arg} must hold integer class labels 0 .. num_classes - 1, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        i = int(np.argmin(a))
        raise ValueError(f"{where}: {arg} holds label {a[i]} at index {i}; expected labels >= 0")
    if num_classes is not None and a.size:
        i = int(np.argmax(a))
        if a[i] >= num_classes:
            raise ValueError(
                f"{where}: {arg} holds label {a[i]} at index {i}; expected labels in [0, {num_classes}) "
                f"for {of or f'num_classes={num_classes}'}"
            )
    return a


def check_split(
    where: str,
    x_arg: str,
    y_arg: str,
    x: Any,
    y: Any,
    *,
    num_classes: int | None = None,
    of: str = "",
    copy: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(inputs, labels)`` of one split: both valid, the same length, at least one example.

    Args:
      where: the caller label.
      x_arg: the inputs' name in errors.
      y_arg: the labels' name in errors.
      x: the inputs, as :func:`check_inputs` takes them.
      y: the labels, as :func:`check_labels` takes them.
      num_classes: the labels' exclusive upper bound, or ``None``.
      of: where ``num_classes`` comes from, for the error.
      copy: as :func:`check_inputs` takes it.

    Returns:
      ``(x, y)`` as :func:`check_inputs` (float32) and :func:`check_labels` return them.

    Examples:
      >>> import numpy as np
      >>> check_split("fit", "x", "y", np.ones((3, 2)), np.arange(2))
      Traceback (most recent call last):
      ...
      ValueError: fit: x and y must have the same length, got 3 and 2
    """
    x, y = check_inputs(where, x_arg, x, copy=copy), check_labels(where, y_arg, y, num_classes=num_classes, of=of)
    if len(x) != len(y):
        raise ValueError(f"{where}: {x_arg} and {y_arg} must have the same length, got {len(x)} and {len(y)}")
    if len(y) == 0:
        raise ValueError(f"{where}: {x_arg} and {y_arg} hold no examples; expected at least 1")
    return x, y


def check_dataset(
    where: str,
    arg: str,
    dataset: Any,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    num_classes: int | None = None,
    of: str = "",
) -> None:
    """Raises unless ``dataset`` is a :class:`~hamjax.data.Dataset` whose ``splits`` hold valid data.

    Each split named in ``splits`` is checked as :func:`check_split` does,
    with labels below ``dataset.num_classes`` (and below ``num_classes``
    when given, e.g. the model's logit count), and errors name the array:
    ``dataset.val.x``.

    Args:
      where: the caller label (``"fit"``).
      arg: the argument's name (``"dataset"``).
      dataset: the value to check.
      splits: which of ``"train"``, ``"val"``, ``"test"`` are used.
      num_classes: a further bound on the labels, or ``None``.
      of: where ``num_classes`` comes from, for the error.

    Examples:
      >>> import numpy as np
      >>> from hamjax import data
      >>> ds = data.from_arrays(np.ones((20, 3), np.float32), np.arange(20) % 2)
      >>> check_dataset("fit", "dataset", ds)
      >>> check_dataset("fit", "dataset", (ds.train.x, ds.train.y))
      Traceback (most recent call last):
      ...
      ValueError: fit: dataset must be a hamjax.data.Dataset, got a tuple of 2 items; make one with hamjax.data.from_arrays(x, y)
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"{where}: {arg} must be a hamjax.data.Dataset, got {describe_value(dataset)}; "
            "make one with hamjax.data.from_arrays(x, y)"
        )
    bound, source = dataset.num_classes, f"{arg}.num_classes={dataset.num_classes}"
    if num_classes is not None and num_classes < bound:
        bound, source = num_classes, of or f"num_classes={num_classes}"
    for key in splits:
        split = getattr(dataset, key)
        if not isinstance(split, Split):
            raise ValueError(f"{where}: {arg}.{key} must be a hamjax.data.Split, got {describe_value(split)}")
        check_split(
            where, f"{arg}.{key}.x", f"{arg}.{key}.y", split.x, split.y, num_classes=bound, of=source, copy=False
        )
