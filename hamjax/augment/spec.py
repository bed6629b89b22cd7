"""Augmentations written as strings: ``"shift=2,rotate=10,cutout=8"`` -> a callable ``(key, x) -> x``.

The grammar is comma-separated ``name=value`` items, applied in the written
order; each name may appear once:

=========== ================================ ===========================
name        value                            range
=========== ================================ ===========================
shift       largest move, whole pixels       ``>= 0``
crop        padding of a random crop         integer ``>= 0``
rotate      largest angle, degrees           ``[0, 180]``
scale       zoom amount                      ``[0, 1)``
cutout      side of the zeroed square        ``>= 0``
noise       Gaussian standard deviation      ``>= 0``
randaugment magnitude                        ``[0, 1]``
ops         operations per example of        integer ``>= 1`` (default 2)
            ``randaugment`` (needs it)
=========== ================================ ===========================

:func:`parse` returns an :class:`Augmentation`, a frozen (hashable, static
under ``jax.jit``) dataclass whose ``repr`` and ``__name__`` are the
normalised spec, so a report can print which augmentations a stage used.
Consecutive geometric items (shift, crop, rotate, scale) multiply their
matrices and warp once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from hamjax._checks import check_int
from hamjax.augment.geometric import crop_matrices, rotate_matrices, scale_matrices, shift_matrices
from hamjax.augment.inputs import RANGES, check_images, check_key, check_strength
from hamjax.augment.pixel import cutout, noise
from hamjax.augment.policy import randaugment
from hamjax.augment.warp import warp

__all__ = ["Augmentation", "parse"]

_GEOMETRIC = ("shift", "crop", "rotate", "scale")
_NAMES = (*RANGES, "ops")


def _format(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A parsed augmentation spec: call it as ``augmentation(key, x) -> x``.

    Attributes:
      steps: ``(name, value)`` pairs in the order they apply (names of
        :data:`hamjax.augment.RANGES`).
      num_ops: the operations per example of a ``randaugment`` step.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> augmentation = parse("shift=2, rotate=10")
      >>> augmentation
      shift=2,rotate=10
      >>> augmentation(jax.random.key(0), jnp.ones((4, 28, 28, 1))).shape
      (4, 28, 28, 1)
    """

    steps: tuple[tuple[str, float], ...]
    num_ops: int = 2

    @property
    def spec(self) -> str:
        """The normalised spec string; :func:`parse` of it gives an equal :class:`Augmentation`."""
        items = []
        for name, value in self.steps:
            items.append(f"{name}={_format(value)}")
            if name == "randaugment" and self.num_ops != 2:
                items.append(f"ops={self.num_ops}")
        return ",".join(items)

    @property
    def __name__(self) -> str:  # callables are named by __name__ in reports
        return self.spec

    def __repr__(self) -> str:
        return self.spec

    def __str__(self) -> str:
        return self.spec

    def __call__(self, key, x: jax.Array) -> jax.Array:
        """Applies the steps in order, each with ``fold_in(key, position)``; returns ``x``'s shape and dtype."""
        where = f"augmentation {self.spec!r}"
        check_key(where, key)
        images = check_images(where, "x", x)
        return _apply(self, key, images).reshape(x.shape)


@functools.partial(jax.jit, static_argnums=0)
def _apply(augmentation: Augmentation, key, images: jax.Array) -> jax.Array:
    n, h, w, _ = images.shape
    pending = None
    for position, (name, value) in enumerate(augmentation.steps):
        step_key = jax.random.fold_in(key, position)
        if name in _GEOMETRIC:
            if name == "shift":
                matrices = shift_matrices(step_key, n, value)
            elif name == "crop":
                matrices = crop_matrices(step_key, n, value)
            elif name == "rotate":
                matrices = rotate_matrices(step_key, n, (h, w), value)
            else:
                matrices = scale_matrices(step_key, n, (h, w), value)
            pending = matrices if pending is None else pending @ matrices
            continue
        if pending is not None:
            images, pending = warp(images, pending), None
        if name == "cutout":
            images = cutout(step_key, images, value)
        elif name == "noise":
            images = noise(step_key, images, value)
        else:
            images = randaugment(step_key, images, value, augmentation.num_ops)
    if pending is not None:
        images = warp(images, pending)
    return images


def parse(spec: str | Augmentation | None) -> Augmentation | None:
    """Turns a spec such as ``"shift=2,rotate=10,cutout=8"`` into an :class:`Augmentation`.

    See the module docstring for the grammar and each value's range.
    Whitespace around items is ignored.

    Args:
      spec: the string, ``None`` or ``""`` (no augmentation), or an
        :class:`Augmentation` (returned as it is).

    Returns:
      An :class:`Augmentation`, or ``None``.

    Raises:
      ValueError: one line naming the spec and the bad item (an unknown
        or repeated name, a value that is not a number or is out of range).

    Examples:
      >>> parse("randaugment=0.5,ops=3")
      randaugment=0.5,ops=3
      >>> parse("rotate=270")
      Traceback (most recent call last):
      ...
      ValueError: parse('rotate=270'): rotate must be a finite number >= 0 and <= 180, got 270.0
    """
    if spec is None or isinstance(spec, Augmentation):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"parse: spec must be a string such as 'shift=2,rotate=10', got {spec!r}")
    if not spec.strip():
        return None
    where = f"parse({spec!r})"
    steps, num_ops, seen = [], None, set()
    for raw in spec.split(","):
        item = raw.strip()
        name, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not name or not text:
            raise ValueError(f"{where}: item {item!r} must read name=value")
        if name not in _NAMES:
            raise ValueError(f"{where}: unknown augmentation {name!r} in {item!r}; expected one of {_NAMES}")
        if name in seen:
            raise ValueError(f"{where}: {name} appears more than once")
        seen.add(name)
        integer = name == "ops" or RANGES[name].integer
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{where}: {name} must be {kind}, got {text!r}") from None
        if name == "ops":
            num_ops = check_int(where, name, value, minimum=1)
            continue
        steps.append((name, check_strength(where, name, value, RANGES[name])))
    if num_ops is not None and "randaugment" not in seen:
        raise ValueError(f"{where}: ops sets randaugment's operations per example, but there is no randaugment item")
    return Augmentation(tuple(steps), 2 if num_ops is None else num_ops)
