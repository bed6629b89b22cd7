"""Random geometric augmentations of a batch: shift, crop, rotate, scale, each example drawing its own.

Each operation draws per-example parameters from ``key`` and applies them
with one :func:`~hamjax.augment.warp` (bilinear, zero fill). The
``*_matrices`` functions return the drawn matrices instead, so a chain of
geometric operations (:func:`hamjax.augment.parse`,
:func:`hamjax.augment.randaugment`) multiplies them and warps once. The
strengths ``pixels``, ``degrees`` and ``amount`` may be traced scalars (a
population vmapped over them): shapes never depend on them. A strength of 0
returns the batch unchanged, bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hamjax._checks import check_int
from hamjax.augment.inputs import RANGES, check_images, check_key, check_strength
from hamjax.augment.warp import rotation, translation, warp, zoom

__all__ = [
    "crop",
    "crop_matrices",
    "rotate",
    "rotate_matrices",
    "scale",
    "scale_matrices",
    "shift",
    "shift_matrices",
]


def _uniform(key, n: int, shape=()) -> jax.Array:
    """Per-example draws in ``[-1, 1)``."""
    return jax.random.uniform(key, (n, *shape), jnp.float32, -1.0, 1.0)


def shift_matrices(key, n: int, pixels, *, subpixel: bool = False) -> jax.Array:
    """Per-example translations of up to ``pixels`` along each axis, as :func:`~hamjax.augment.warp` matrices.

    Without ``subpixel`` each axis moves by a whole number of pixels drawn
    uniformly from ``{-floor(pixels), ..., floor(pixels)}``, which copies
    pixels exactly (no blur); with it, by a real number uniform in
    ``[-pixels, pixels]``.

    Args:
      key: a PRNG key.
      n: the number of examples.
      pixels: the largest move, ``>= 0`` (may be traced).
      subpixel: draw real-valued moves instead of whole pixels.

    Returns:
      ``(n, 3, 3)`` float32 matrices.

    Examples:
      >>> import jax
      >>> shift_matrices(jax.random.key(0), 4, 2).shape
      (4, 3, 3)
    """
    check_key("shift_matrices", key)
    n = check_int("shift_matrices", "n", n, minimum=1)
    check_strength("shift_matrices", "pixels", pixels, RANGES["shift"])
    return _shift_matrices(key, n, pixels, bool(subpixel))


@functools.partial(jax.jit, static_argnums=(1, 3))
def _shift_matrices(key, n: int, pixels, subpixel: bool) -> jax.Array:
    pixels = jnp.asarray(pixels, jnp.float32)
    if subpixel:
        return translation(_uniform(key, n, (2,)) * pixels)
    whole = jnp.floor(pixels)
    draws = jax.random.uniform(key, (n, 2), jnp.float32)
    return translation(jnp.minimum(jnp.floor(draws * (2 * whole + 1)), 2 * whole) - whole)


def crop_matrices(key, n: int, padding: int) -> jax.Array:
    """Per-example matrices of a random crop of the image zero-padded by ``padding`` on every side.

    A crop of the padded image back to ``H x W`` at offset ``(a, b)`` in
    ``[0, 2 * padding]`` is the translation by ``(padding - a, padding - b)``,
    so this is :func:`shift_matrices` by whole pixels up to ``padding``.

    Args:
      key: a PRNG key.
      n: the number of examples.
      padding: a static int ``>= 0``.

    Returns:
      ``(n, 3, 3)`` float32 matrices.

    Examples:
      >>> import jax
      >>> crop_matrices(jax.random.key(0), 2, 4).shape
      (2, 3, 3)
    """
    check_key("crop_matrices", key)
    padding = check_strength("crop_matrices", "padding", padding, RANGES["crop"])
    return shift_matrices(key, n, padding)


def rotate_matrices(key, n: int, size: Sequence[int], degrees) -> jax.Array:
    """Per-example rotations about the centre by an angle uniform in ``[-degrees, degrees]``.

    Args:
      key: a PRNG key.
      n: the number of examples.
      size: ``(H, W)`` of the images.
      degrees: the largest angle, in ``[0, 180]`` (may be traced);
        positive angles turn counter-clockwise as displayed.

    Returns:
      ``(n, 3, 3)`` float32 matrices.

    Examples:
      >>> import jax
      >>> rotate_matrices(jax.random.key(0), 3, (28, 28), 10).shape
      (3, 3, 3)
    """
    check_key("rotate_matrices", key)
    n = check_int("rotate_matrices", "n", n, minimum=1)
    check_strength("rotate_matrices", "degrees", degrees, RANGES["rotate"])
    return _rotate_matrices(key, n, tuple(size), degrees)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _rotate_matrices(key, n: int, size: tuple[int, int], degrees) -> jax.Array:
    return rotation(_uniform(key, n) * jnp.deg2rad(jnp.asarray(degrees, jnp.float32)), size)


def scale_matrices(key, n: int, size: Sequence[int], amount) -> jax.Array:
    """Per-example zooms about the centre by a factor uniform in ``[1 - amount, 1 + amount]``.

    Args:
      key: a PRNG key.
      n: the number of examples.
      size: ``(H, W)`` of the images.
      amount: in ``[0, 1)`` (may be traced); factors above 1 zoom in.

    Returns:
      ``(n, 3, 3)`` float32 matrices.

    Examples:
      >>> import jax
      >>> scale_matrices(jax.random.key(0), 3, (28, 28), 0.1).shape
      (3, 3, 3)
    """
    check_key("scale_matrices", key)
    n = check_int("scale_matrices", "n", n, minimum=1)
    check_strength("scale_matrices", "amount", amount, RANGES["scale"])
    return _scale_matrices(key, n, tuple(size), amount)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _scale_matrices(key, n: int, size: tuple[int, int], amount) -> jax.Array:
    return zoom(1.0 + _uniform(key, n) * jnp.asarray(amount, jnp.float32), size)


def shift(key, x: jax.Array, pixels, *, subpixel: bool = False) -> jax.Array:
    """Moves each image by its own random offset of up to ``pixels`` per axis, filling with zeros.

    Args:
      key: a PRNG key.
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      pixels: the largest move, ``>= 0`` (may be traced); whole pixels
        unless ``subpixel`` (see :func:`shift_matrices`).
      subpixel: real-valued moves with bilinear sampling.

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.ones((8, 28, 28, 1))
      >>> y = shift(jax.random.key(0), x, 2)
      >>> y.shape, bool((shift(jax.random.key(0), x, 0) == x).all())
      ((8, 28, 28, 1), True)
    """
    check_key("shift", key)
    check_strength("shift", "pixels", pixels, RANGES["shift"])
    images = check_images("shift", "x", x)
    return warp(images, shift_matrices(key, images.shape[0], pixels, subpixel=subpixel)).reshape(x.shape)


def crop(key, x: jax.Array, padding: int) -> jax.Array:
    """Zero-pads each image by ``padding`` pixels and crops it back to its size at a random offset.

    Args:
      key: a PRNG key.
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      padding: a static int ``>= 0``.

    Returns:
      An array of ``x``'s shape and dtype, each image a whole-pixel
      translation of its input by at most ``padding`` per axis.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> crop(jax.random.key(0), jnp.ones((2, 8, 8, 3)), 4).shape
      (2, 8, 8, 3)
    """
    check_key("crop", key)
    padding = check_strength("crop", "padding", padding, RANGES["crop"])
    images = check_images("crop", "x", x)
    return warp(images, crop_matrices(key, images.shape[0], padding)).reshape(x.shape)


def rotate(key, x: jax.Array, degrees) -> jax.Array:
    """Rotates each image about its centre by its own angle uniform in ``[-degrees, degrees]``.

    Bilinear sampling; corners rotated in from outside the image are zero.

    Args:
      key: a PRNG key.
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      degrees: in ``[0, 180]`` (may be traced).

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> rotate(jax.random.key(0), jnp.ones((2, 28, 28)), 10).shape
      (2, 28, 28)
    """
    check_key("rotate", key)
    check_strength("rotate", "degrees", degrees, RANGES["rotate"])
    images = check_images("rotate", "x", x)
    n, h, w, _ = images.shape
    return warp(images, rotate_matrices(key, n, (h, w), degrees)).reshape(x.shape)


def scale(key, x: jax.Array, amount) -> jax.Array:
    """Zooms each image about its centre by its own factor uniform in ``[1 - amount, 1 + amount]``.

    Bilinear sampling; a zoom out leaves a zero border.

    Args:
      key: a PRNG key.
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      amount: in ``[0, 1)`` (may be traced).

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> scale(jax.random.key(0), jnp.ones((2, 28, 28, 1)), 0.1).shape
      (2, 28, 28, 1)
    """
    check_key("scale", key)
    check_strength("scale", "amount", amount, RANGES["scale"])
    images = check_images("scale", "x", x)
    n, h, w, _ = images.shape
    return warp(images, scale_matrices(key, n, (h, w), amount)).reshape(x.shape)
