"""One batched affine warp with bilinear sampling, and the matrices of translation, rotation and zoom.

Every geometric augmentation (shift, crop, rotation, scaling) is one
:func:`warp` of the batch by per-example ``3 x 3`` matrices, so a chain of
them costs one warp: the matrices compose by multiplication. A matrix maps
an output pixel's homogeneous coordinates ``(row, col, 1)`` to the input
coordinates it samples (the inverse map), pixel ``i`` having its centre at
``i``. Samples between pixels are bilinear; samples outside the image are
zero. The warp is four gathers over the flattened batch, no convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hamjax.augment.inputs import check_images

__all__ = ["rotation", "translation", "warp", "zoom"]


@jax.jit
def _warp(x: jax.Array, matrices: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    grid = jnp.stack([rows.ravel(), cols.ravel(), jnp.ones(h * w, jnp.float32)], axis=-1)
    source = jnp.einsum("nij,pj->npi", matrices[:, :2, :], grid)
    r, s = source[..., 0], source[..., 1]
    r0, s0 = jnp.floor(r), jnp.floor(s)
    fr, fs = r - r0, s - s0
    flat = x.reshape(n, h * w, c)
    out = jnp.zeros_like(flat)
    for dr, weight_r in ((0.0, 1.0 - fr), (1.0, fr)):
        for ds, weight_s in ((0.0, 1.0 - fs), (1.0, fs)):
            ri, si = r0 + dr, s0 + ds
            inside = (ri >= 0) & (ri <= h - 1) & (si >= 0) & (si <= w - 1)
            weight = jnp.where(inside, weight_r * weight_s, 0.0).astype(x.dtype)
            index = (jnp.clip(ri, 0, h - 1) * w + jnp.clip(si, 0, w - 1)).astype(jnp.int32)
            out = out + jnp.take_along_axis(flat, index[..., None], axis=1) * weight[..., None]
    return out.reshape(x.shape)


def warp(x: jax.Array, matrices: jax.Array) -> jax.Array:
    """Resample every image of a batch through its own affine matrix: bilinear, zero outside.

    ``out[n, p] = bilinear(x[n], matrices[n] @ (p_row, p_col, 1))``. An
    identity matrix returns ``x`` exactly; so does a translation by whole
    pixels, away from the border it fills with zeros.

    Args:
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      matrices: ``(N, 3, 3)`` (or one ``(3, 3)`` for all) float matrices
        from output to input coordinates, such as :func:`translation`,
        :func:`rotation`, :func:`zoom` or their products.

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(9.0).reshape(1, 3, 3)
      >>> warp(x, translation(jnp.array([[0.0, 1.0]])))[0]
      Array([[0., 0., 1.],
             [0., 3., 4.],
             [0., 6., 7.]], dtype=float32)
    """
    images = check_images("warp", "x", x)
    matrices = jnp.asarray(matrices, jnp.float32)
    if matrices.shape == (3, 3):
        matrices = jnp.broadcast_to(matrices, (images.shape[0], 3, 3))
    if matrices.shape != (images.shape[0], 3, 3):
        raise ValueError(f"warp: matrices must have shape ({images.shape[0]}, 3, 3) or (3, 3), got {matrices.shape}")
    return _warp(images, matrices).reshape(x.shape)


def translation(offsets: jax.Array) -> jax.Array:
    """Matrices that move each image's content by ``(rows, cols)`` pixels (down and right when positive).

    Args:
      offsets: ``(N, 2)`` float offsets, rows then columns.

    Returns:
      ``(N, 3, 3)`` float32 matrices for :func:`warp`.

    Examples:
      >>> translation(jnp.array([[2.0, -1.0]]))[0]
      Array([[ 1.,  0., -2.],
             [ 0.,  1.,  1.],
             [ 0.,  0.,  1.]], dtype=float32)
    """
    offsets = jnp.asarray(offsets, jnp.float32)
    eye = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (offsets.shape[0], 3, 3))
    return eye.at[:, :2, 2].set(-offsets)


def _about_centre(linear: jax.Array, size: Sequence[int]) -> jax.Array:
    """``(N, 3, 3)`` matrices applying ``(N, 2, 2)`` ``linear`` about the image centre."""
    centre = jnp.array([(size[0] - 1) / 2, (size[1] - 1) / 2], jnp.float32)
    moved = centre[None, :] - jnp.einsum("nij,j->ni", linear, centre)
    top = jnp.concatenate([linear, moved[:, :, None]], axis=2)
    bottom = jnp.broadcast_to(jnp.array([[[0.0, 0.0, 1.0]]], jnp.float32), (linear.shape[0], 1, 3))
    return jnp.concatenate([top, bottom], axis=1)


def rotation(angles: jax.Array, size: Sequence[int]) -> jax.Array:
    """Matrices that rotate each image counter-clockwise (as displayed) by ``angles`` radians about its centre.

    Args:
      angles: ``(N,)`` float angles in radians.
      size: ``(H, W)`` of the images.

    Returns:
      ``(N, 3, 3)`` float32 matrices for :func:`warp`; a quarter turn
      matches ``jnp.rot90`` on a square image.

    Examples:
      >>> import math
      >>> x = jnp.arange(4.0).reshape(1, 2, 2)
      >>> warp(x, rotation(jnp.array([math.pi / 2]), (2, 2)))[0].round(4)
      Array([[1., 3.],
             [0., 2.]], dtype=float32)
    """
    angles = jnp.asarray(angles, jnp.float32)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    linear = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)
    return _about_centre(linear, size)


def zoom(factors: jax.Array, size: Sequence[int]) -> jax.Array:
    """Matrices that magnify each image by ``factors`` about its centre (``> 1`` zooms in).

    Args:
      factors: ``(N,)`` positive float zoom factors.
      size: ``(H, W)`` of the images.

    Returns:
      ``(N, 3, 3)`` float32 matrices for :func:`warp`.

    Examples:
      >>> zoom(jnp.array([2.0]), (5, 5))[0]
      Array([[0.5, 0. , 1. ],
             [0. , 0.5, 1. ],
             [0. , 0. , 1. ]], dtype=float32)
    """
    inverse = 1.0 / jnp.asarray(factors, jnp.float32)
    zeros = jnp.zeros_like(inverse)
    linear = jnp.stack([jnp.stack([inverse, zeros], -1), jnp.stack([zeros, inverse], -1)], -2)
    return _about_centre(linear, size)
