"""Checks shared by the model configs; each raises ``ValueError`` naming the field."""

from __future__ import annotations

from collections.abc import Sequence


def positive_int(cls: str, field: str, value) -> None:
    """Raise unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}.{field}={value!r}: expected a positive int")


def positive_ints(cls: str, field: str, value, *, min_len: int = 0) -> None:
    """Raise unless ``value`` is a sequence of at least ``min_len`` positive ints."""
    if not isinstance(value, Sequence) or len(value) < min_len:
        raise ValueError(f"{cls}.{field}={value!r}: expected a tuple of at least {min_len} positive ints")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{cls}.{field}={value!r}: expected positive ints, got element {v!r}")


def rate(cls: str, field: str, value) -> None:
    """Raise unless ``value`` is a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{cls}.{field}={value!r}: expected a number in [0, 1)")


def positive_number(cls: str, field: str, value) -> None:
    """Raise unless ``value`` is a number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{cls}.{field}={value!r}: expected a positive number")


def image_shape(cls: str, field: str, value) -> None:
    """Raise unless ``value`` is ``(H, W, C)`` of positive ints."""
    positive_ints(cls, field, value, min_len=3)
    if len(value) != 3:
        raise ValueError(f"{cls}.{field}={value!r}: expected (height, width, channels)")


def check_input(name: str, x, expected: tuple[int, ...]) -> None:
    """Raise before any matmul when ``x`` is not ``(N, *expected)``."""
    if tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(f"{name}: input x has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, expected))})")
