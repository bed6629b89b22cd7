"""What every augmentation checks before tracing: its images, its key and the range of its strength.

Each augmentation takes a key, a batch and a strength (pixels, degrees, a
zoom amount, a standard deviation, a RandAugment magnitude). Shapes and
dtypes are static, so they are checked even under ``jax.jit``; a strength
may be a traced array (a population vmapped over magnitudes), so it is
checked only when concrete. :data:`RANGES` holds the one table of allowed
strengths that the operations and :func:`hamjax.augment.parse` both read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_int, check_number, is_traced

__all__ = ["RANGES", "Range", "check_images", "check_key", "check_strength"]


class Range(NamedTuple):
    """The values an augmentation's strength may take.

    Attributes:
      minimum: the least value (inclusive).
      maximum: the greatest value, or ``None`` for no bound.
      exclusive_maximum: whether ``maximum`` itself is refused.
      integer: whether the value must be a whole number (a static size).

    Examples:
      >>> str(Range(0, 1, exclusive_maximum=True))
      '[0, 1)'
    """

    minimum: float
    maximum: float | None = None
    exclusive_maximum: bool = False
    integer: bool = False

    def __str__(self) -> str:
        if self.maximum is None:
            return f">= {self.minimum:g}"
        return f"[{self.minimum:g}, {self.maximum:g}{')' if self.exclusive_maximum else ']'}"


# The strength of each operation, by the name parse() reads: pixels of shift, padding of crop,
# degrees of rotate, zoom amount of scale, side of cutout, std of noise, magnitude of randaugment.
RANGES = {
    "shift": Range(0),
    "crop": Range(0, integer=True),
    "rotate": Range(0, 180),
    "scale": Range(0, 1, exclusive_maximum=True),
    "cutout": Range(0),
    "noise": Range(0),
    "randaugment": Range(0, 1),
}


def check_strength(where: str, arg: str, value: Any, allowed: Range) -> Any:
    """Checks a concrete strength against ``allowed``; a traced scalar passes unchecked.

    Args:
      where: the caller label (the public function a user called).
      arg: the argument's name.
      value: a Python number, a 0-d array, or a traced 0-d array.
      allowed: the :class:`Range` it must lie in (e.g. ``RANGES["rotate"]``).

    Returns:
      ``value`` unchanged (an int for an integer range).

    Examples:
      >>> check_strength("rotate", "degrees", 10, RANGES["rotate"])
      10
      >>> check_strength("rotate", "degrees", 270, RANGES["rotate"])
      Traceback (most recent call last):
      ...
      ValueError: rotate: degrees must be a finite number >= 0 and <= 180, got 270
    """
    if is_traced(value):
        if allowed.integer or np.ndim(value) != 0:
            raise ValueError(
                f"{where}: {arg} must be a concrete scalar in {allowed}, got a traced array of shape {np.shape(value)}"
            )
        return value
    if allowed.integer:
        return check_int(where, arg, value, minimum=int(allowed.minimum))
    check_number(
        where,
        arg,
        value,
        minimum=allowed.minimum,
        maximum=allowed.maximum,
        exclusive_maximum=allowed.exclusive_maximum,
    )
    return value


def _describe(value: Any) -> str:
    shape, dtype = np.shape(value), getattr(value, "dtype", None)
    return f"an array of shape {shape} and dtype {dtype}" if dtype is not None else repr(value)


def check_images(where: str, arg: str, x: Any) -> jax.Array:
    """``x`` as a floating ``(N, H, W, C)`` array, or a one-line ValueError; ``(N, H, W)`` gains ``C = 1``.

    Args:
      where: the caller label.
      arg: the argument's name.
      x: a floating array of shape ``(N, H, W, C)`` or ``(N, H, W)``, concrete or traced.

    Returns:
      ``x`` as a 4-d ``jax.Array`` of the same dtype; callers reshape their
      result back to ``x.shape``.

    Examples:
      >>> import jax.numpy as jnp
      >>> check_images("shift", "x", jnp.zeros((2, 8, 8))).shape
      (2, 8, 8, 1)
      >>> check_images("shift", "x", jnp.zeros((2, 8, 8), jnp.int32))
      Traceback (most recent call last):
      ...
      ValueError: shift: x must be a floating array of shape (N, H, W, C) or (N, H, W), got an array of shape (2, 8, 8) and dtype int32
    """
    want = f"{where}: {arg} must be a floating array of shape (N, H, W, C) or (N, H, W), got {_describe(x)}"
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or np.ndim(x) not in (3, 4) or 0 in np.shape(x):
        raise ValueError(want)
    x = jnp.asarray(x)
    return x if x.ndim == 4 else x[..., None]


def check_key(where: str, key: Any) -> Any:
    """``key`` if it is one PRNG key (``jax.random.key(seed)`` or a raw ``uint32[2]``), else a ValueError.

    A batch of keys is refused: vmap the augmentation over them instead.

    Args:
      where: the caller label.
      key: the key, concrete or traced.

    Returns:
      ``key`` unchanged.

    Examples:
      >>> import jax
      >>> _ = check_key("shift", jax.random.key(0))
      >>> check_key("shift", 0)
      Traceback (most recent call last):
      ...
      ValueError: shift: key must be one PRNG key (jax.random.key(seed) or a raw uint32[2] key), got 0
    """
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and np.shape(key) == ()
    raw = dtype is not None and dtype == jnp.uint32 and np.shape(key) == (2,)
    if not (typed or raw):
        raise ValueError(
            f"{where}: key must be one PRNG key (jax.random.key(seed) or a raw uint32[2] key), got {_describe(key)}"
        )
    return key
