"""Argument checks shared across hamjax modules; errors name the argument, value and expectation."""

from __future__ import annotations

import operator
from typing import Any


def check_int(name: str, value: Any, minimum: int) -> int:
    """Returns ``value`` as an int, or raises if it is not an integer >= minimum."""
    try:
        as_int = operator.index(value)
    except TypeError:
        as_int = None
    if as_int is None or isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int
