"""Argument checks shared by every hamjax module: one wording per check.

Every check takes ``(where, arg, value, ...)``: ``where`` is the caller label
(the public function or class a user called, e.g. ``"magnitude_prune"``), and
``arg`` the argument's name. Errors read ``"{where}: {arg} must be ..., got
{value!r}"``, so they name the argument, the value and what was expected.
Checks on values that may be traced (a searchable hyperparameter under
``jax.vmap``) pass tracers through unchecked: their range is the caller's
contract, and checking them would force a concrete value.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def is_traced(value: Any) -> bool:
    """Whether ``value`` is a JAX tracer (inside ``jit``, ``vmap`` or ``grad``)."""
    return isinstance(value, jax.core.Tracer)


def _label(where: str, arg: str) -> str:
    return f"{where}: {arg}" if where else arg


def check_int(where: str, arg: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int, or raises if it is not an integer in ``[minimum, maximum]``.

    Booleans are refused (``True`` is not a count).

    Examples:
      >>> check_int("fit", "epochs", 3, minimum=1)
      3
      >>> check_int("fit", "epochs", 2.5, minimum=1)
      Traceback (most recent call last):
      ...
      ValueError: fit: epochs must be an integer >= 1, got 2.5
    """
    try:
        as_int = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        as_int = None
    low_ok = minimum is None or (as_int is not None and as_int >= minimum)
    high_ok = maximum is None or (as_int is not None and as_int <= maximum)
    if as_int is None or not low_ok or not high_ok:
        if minimum is not None and maximum is not None:
            want = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            want = f"an integer >= {minimum}"
        elif maximum is not None:
            want = f"an integer <= {maximum}"
        else:
            want = "an integer"
        raise ValueError(f"{_label(where, arg)} must be {want}, got {value!r}")
    return as_int


def check_number(
    where: str,
    arg: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """``value`` as a finite Python float within the given bounds, or raises.

    NaN and infinities are always refused; so are booleans and strings.

    Examples:
      >>> check_number("TrainConfig", "learning_rate", 1e-3, minimum=0, exclusive_minimum=True)
      0.001
      >>> check_number("TrainConfig", "learning_rate", float("inf"), minimum=0, exclusive_minimum=True)
      Traceback (most recent call last):
      ...
      ValueError: TrainConfig: learning_rate must be a finite number > 0, got inf
    """
    low = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum:g}"
    high = "" if maximum is None else f"{'<' if exclusive_maximum else '<='} {maximum:g}"
    want = (
        "a finite number" + (f" {low}" if low else "") + (" and" if low and high else "") + (f" {high}" if high else "")
    )
    if isinstance(value, bool | str | bytes) or np.ndim(value) != 0:
        raise ValueError(f"{_label(where, arg)} must be {want}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_label(where, arg)} must be {want}, got {value!r}") from None
    ok = math.isfinite(v)
    if ok and minimum is not None:
        ok = v > minimum if exclusive_minimum else v >= minimum
    if ok and maximum is not None:
        ok = v < maximum if exclusive_maximum else v <= maximum
    if not ok:
        raise ValueError(f"{_label(where, arg)} must be {want}, got {value!r}")
    return v


def check_positive(where: str, arg: str, value: Any) -> float:
    """``value`` as a finite float > 0, or raises (learning rates, temperatures, scales)."""
    return check_number(where, arg, value, minimum=0, exclusive_minimum=True)


def check_fraction(where: str, arg: str, value: Any, *, closed: bool = False) -> Any:
    """Checks a scalar in ``[0, 1)`` (``[0, 1]`` with ``closed``); tracers pass unchecked.

    This is the one sparsity check: sparsity 1 would remove every weight.

    Returns:
      ``value`` unchanged (a tracer stays a tracer).

    Examples:
      >>> check_fraction("magnitude_prune", "sparsity", 0.9)
      0.9
      >>> check_fraction("magnitude_prune", "sparsity", 1.0)
      Traceback (most recent call last):
      ...
      ValueError: magnitude_prune: sparsity must be a scalar in [0, 1), got 1.0
    """
    want = "a scalar in [0, 1]" if closed else "a scalar in [0, 1)"
    if is_traced(value):
        if np.ndim(value) != 0:
            raise ValueError(f"{_label(where, arg)} must be {want}, got a traced array of shape {np.shape(value)}")
        return value
    try:
        v = np.asarray(value)
    except (TypeError, ValueError):
        v = None
    if v is None or v.ndim != 0 or v.dtype == bool or not np.issubdtype(v.dtype, np.number):
        raise ValueError(f"{_label(where, arg)} must be {want}, got {value!r}")
    f = float(v)
    if not (0.0 <= f <= 1.0 if closed else 0.0 <= f < 1.0):
        raise ValueError(f"{_label(where, arg)} must be {want}, got {value!r}")
    return value


def check_choice(where: str, arg: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, or raises listing them.

    Examples:
      >>> check_choice("magnitude_prune", "scope", "layer", ("layer", "global"))
      'layer'
      >>> check_choice("magnitude_prune", "scope", "model", ("layer", "global"))
      Traceback (most recent call last):
      ...
      ValueError: magnitude_prune: scope must be one of ('layer', 'global'), got 'model'
    """
    choices = tuple(choices)
    if isinstance(value, str | int | float | bool | type(None)) and value in choices:
        return value
    raise ValueError(f"{_label(where, arg)} must be one of {choices}, got {value!r}")


def check_finite(where: str, arg: str, tree: Any) -> None:
    """Raises if a concrete array, or any leaf of a pytree of arrays, holds NaN or inf.

    Traced leaves pass. The error names the leaf's key path and how many
    entries are not finite.

    Examples:
      >>> import numpy as np
      >>> check_finite("fit", "x", {"a": np.ones(3)})
      >>> check_finite("fit", "x", {"a": np.array([1.0, np.nan])})
      Traceback (most recent call last):
      ...
      ValueError: fit: x['a'] holds 1 non-finite values (NaN or inf) of 2; expected finite
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if is_traced(leaf) or leaf is None:
            continue
        a = np.asarray(leaf)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating)):
            continue
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(
                f"{_label(where, arg)}{jax.tree_util.keystr(path)} holds {bad} non-finite values (NaN or inf) "
                f"of {a.size}; expected finite"
            )
