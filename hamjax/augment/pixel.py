"""Random pixel augmentations of a batch: cutout (a zeroed square) and Gaussian noise.

The square of :func:`cutout` is a mask of distances to a random centre, so
its side may be a traced scalar; the noise's standard deviation may be one
too. Both leave the batch unchanged, bit for bit, at strength 0.

References:
  DeVries and Taylor, "Improved Regularization of Convolutional Neural
  Networks with Cutout", 2017. https://arxiv.org/abs/1708.04552
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_int
from hamjax.augment.inputs import RANGES, check_images, check_key, check_strength

__all__ = ["box_masks", "cutout", "cutout_masks", "noise"]


def box_masks(key, n: int, size_hw: Sequence[int], sides: jax.Array) -> jax.Array:
    """Per-example boolean masks, ``True`` on a box of ``sides`` pixels around a random pixel.

    The centre ``(r, c)`` is a pixel drawn uniformly from the image; the
    box holds the rows in ``[r - height/2, r + height/2)`` and the columns
    in ``[c - width/2, c + width/2)``, so whole sides cover
    ``height x width`` pixels where the box fits, and less where it crosses
    the border. :func:`cutout` and :func:`hamjax.augment.cutmix` draw their
    boxes here.

    Args:
      key: a PRNG key.
      n: the number of examples.
      size_hw: ``(H, W)`` of the images.
      sides: float ``(n, 2)`` box heights and widths in pixels (may be traced).

    Returns:
      A bool array of shape ``(n, H, W)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> masks = box_masks(jax.random.key(0), 2, (28, 28), jnp.full((2, 2), 4.0))
      >>> masks.shape, int(masks.sum()) <= 2 * 16
      ((2, 28, 28), True)
    """
    check_key("box_masks", key)
    n = check_int("box_masks", "n", n, minimum=1)
    if np.shape(sides) != (n, 2):
        raise ValueError(f"box_masks: sides must have shape ({n}, 2), got {np.shape(sides)}")
    return _box_masks(key, n, tuple(size_hw), sides)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _box_masks(key, n: int, size_hw: tuple[int, int], sides: jax.Array) -> jax.Array:
    h, w = size_hw
    half = jnp.asarray(sides, jnp.float32) / 2
    limits = jnp.array([[h, w]], jnp.float32)
    centres = jnp.minimum(jnp.floor(jax.random.uniform(key, (n, 2), jnp.float32) * limits), limits - 1)
    rows = jnp.arange(h, dtype=jnp.float32)[None, :] - centres[:, :1]
    cols = jnp.arange(w, dtype=jnp.float32)[None, :] - centres[:, 1:]
    in_rows = (rows >= -half[:, :1]) & (rows < half[:, :1])
    in_cols = (cols >= -half[:, 1:]) & (cols < half[:, 1:])
    return in_rows[:, :, None] & in_cols[:, None, :]


def cutout_masks(key, n: int, size_hw: Sequence[int], size) -> jax.Array:
    """Per-example boolean masks, ``True`` on a square of side ``size`` around a random pixel (:func:`box_masks`).

    Args:
      key: a PRNG key.
      n: the number of examples.
      size_hw: ``(H, W)`` of the images.
      size: the side in pixels, ``>= 0`` (may be traced).

    Returns:
      A bool array of shape ``(n, H, W)``.

    Examples:
      >>> import jax
      >>> masks = cutout_masks(jax.random.key(0), 2, (28, 28), 4)
      >>> masks.shape, int(masks.sum()) <= 2 * 16
      ((2, 28, 28), True)
    """
    check_key("cutout_masks", key)
    n = check_int("cutout_masks", "n", n, minimum=1)
    check_strength("cutout_masks", "size", size, RANGES["cutout"])
    return box_masks(key, n, size_hw, jnp.broadcast_to(jnp.asarray(size, jnp.float32), (n, 2)))


def cutout(key, x: jax.Array, size) -> jax.Array:
    """Zeroes a square of side ``size`` pixels at a random centre in each image (every channel).

    Args:
      key: a PRNG key.
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      size: the side in pixels, ``>= 0`` (may be traced); see
        :func:`box_masks` for the square's placement.

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> y = cutout(jax.random.key(0), jnp.ones((1, 28, 28, 1)), 8)
      >>> 0 < int((y == 0).sum()) <= 64
      True
    """
    check_key("cutout", key)
    check_strength("cutout", "size", size, RANGES["cutout"])
    images = check_images("cutout", "x", x)
    return _cutout(key, images, size).reshape(x.shape)


@jax.jit
def _cutout(key, images: jax.Array, size) -> jax.Array:
    n, h, w, _ = images.shape
    masks = cutout_masks(key, n, (h, w), size)
    return jnp.where(masks[..., None], jnp.zeros((), images.dtype), images)


def noise(key, x: jax.Array, std) -> jax.Array:
    """Adds independent Gaussian noise of standard deviation ``std`` to every pixel.

    ``std`` is in the data's units (images scaled to ``[0, 1]``: 0.1 is
    a tenth of the range); nothing is clipped.

    Args:
      key: a PRNG key.
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      std: ``>= 0`` (may be traced).

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> y = noise(jax.random.key(0), jnp.zeros((64, 28, 28)), 0.1)
      >>> round(float(y.std()), 2)
      0.1
    """
    check_key("noise", key)
    check_strength("noise", "std", std, RANGES["noise"])
    images = check_images("noise", "x", x)
    return _noise(key, images, std).reshape(x.shape)


@jax.jit
def _noise(key, images: jax.Array, std) -> jax.Array:
    draws = jax.random.normal(key, images.shape, images.dtype)
    return images + draws * jnp.asarray(std, jnp.float32).astype(images.dtype)
