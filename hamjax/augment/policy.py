"""A RandAugment-style policy whose one strength, the magnitude, is an array leaf a population can search.

Per example, :func:`randaugment` draws ``num_ops`` operations uniformly from
:data:`RANDAUGMENT_OPS` and applies each at a strength set by the magnitude
``m`` in ``[0, 1]`` (``S`` is the shorter image side):

======== ===================================================
shift    moves of up to ``0.25 * m * S`` pixels per axis (real-valued)
rotate   angles up to ``30 * m`` degrees either way
scale    zoom factors in ``[1 - 0.3 * m, 1 + 0.3 * m]``
cutout   a zeroed square of side ``0.5 * m * S`` pixels
noise    Gaussian noise of standard deviation ``0.2 * m`` (data units)
identity nothing
======== ===================================================

The ranges are fixed and the magnitude scales them all, as in RandAugment,
so one scalar spans "no augmentation" (``m = 0``, the batch unchanged, bit
for bit) to "heavy". It is traced like any array, so
``jax.vmap(lambda m: randaugment(key, x, m))(magnitudes)`` augments one
batch at several magnitudes in one call.

Every candidate is computed for every example and the drawn ones are
selected with ``jnp.where``; to stay at the price of one warp, the geometric
choices of all slots compose into one matrix and warp first (in the drawn
order), then the cutout squares are zeroed, then the noise is added (the
variances of several noise draws add up).

References:
  Cubuk et al., "RandAugment: Practical automated data augmentation with a
  reduced search space", NeurIPS Workshops 2020. https://arxiv.org/abs/1909.13719
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hamjax._checks import check_int
from hamjax.augment.geometric import rotate_matrices, scale_matrices, shift_matrices
from hamjax.augment.inputs import RANGES, check_images, check_key, check_strength
from hamjax.augment.pixel import cutout_masks
from hamjax.augment.warp import warp

__all__ = ["RANDAUGMENT_OPS", "randaugment"]

RANDAUGMENT_OPS = ("shift", "rotate", "scale", "cutout", "noise", "identity")

# Strength of each operation at magnitude 1 (the table in the module docstring).
_SHIFT, _DEGREES, _AMOUNT, _CUTOUT, _STD = 0.25, 30.0, 0.3, 0.5, 0.2


def randaugment(key, x: jax.Array, magnitude, num_ops: int = 2) -> jax.Array:
    """Applies ``num_ops`` operations drawn per example from :data:`RANDAUGMENT_OPS` at strength ``magnitude``.

    See the module docstring for how the magnitude maps to each operation's
    range, and the order the drawn operations apply in.

    Args:
      key: a PRNG key.
      x: floating ``(N, H, W, C)`` or ``(N, H, W)`` images.
      magnitude: a scalar in ``[0, 1]``, concrete or traced (a population's
        array leaf); 0 returns ``x`` unchanged.
      num_ops: a static int ``>= 1``, the operations drawn per example
        (with replacement: identity is one of the six).

    Returns:
      An array of ``x``'s shape and dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> key, x = jax.random.key(0), jnp.ones((8, 28, 28, 1))
      >>> randaugment(key, x, 0.5).shape
      (8, 28, 28, 1)
      >>> jax.vmap(lambda m: randaugment(key, x, m))(jnp.array([0.0, 0.5, 1.0])).shape
      (3, 8, 28, 28, 1)
      >>> bool((randaugment(key, x, 0.0) == x).all())
      True
    """
    check_key("randaugment", key)
    check_strength("randaugment", "magnitude", magnitude, RANGES["randaugment"])
    num_ops = check_int("randaugment", "num_ops", num_ops, minimum=1)
    images = check_images("randaugment", "x", x)
    return _randaugment(key, images, magnitude, num_ops).reshape(x.shape)


@functools.partial(jax.jit, static_argnums=3)
def _randaugment(key, images: jax.Array, magnitude, num_ops: int) -> jax.Array:
    n, h, w, _ = images.shape
    m = jnp.asarray(magnitude, jnp.float32)
    side = float(min(h, w))
    identity = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
    matrices, cut = identity, jnp.zeros((n, h, w), bool)
    variance = jnp.zeros((n,), jnp.float32)
    key, noise_key = jax.random.split(key)
    for slot_key in jax.random.split(key, num_ops):
        choose, k_shift, k_rotate, k_scale, k_cutout = jax.random.split(slot_key, 5)
        op = jax.random.randint(choose, (n,), 0, len(RANDAUGMENT_OPS))
        chosen = [op == RANDAUGMENT_OPS.index(name) for name in RANDAUGMENT_OPS]
        candidates = (
            (chosen[0], shift_matrices(k_shift, n, _SHIFT * side * m, subpixel=True)),
            (chosen[1], rotate_matrices(k_rotate, n, (h, w), _DEGREES * m)),
            (chosen[2], scale_matrices(k_scale, n, (h, w), _AMOUNT * m)),
        )
        slot = identity
        for mask, candidate in candidates:
            slot = jnp.where(mask[:, None, None], candidate, slot)
        matrices = matrices @ slot
        cut = cut | (cutout_masks(k_cutout, n, (h, w), _CUTOUT * side * m) & chosen[3][:, None, None])
        variance = variance + jnp.where(chosen[4], jnp.square(_STD * m), 0.0)
    out = warp(images, matrices)
    out = jnp.where(cut[..., None], jnp.zeros((), out.dtype), out)
    scale = jnp.sqrt(variance).astype(out.dtype)[:, None, None, None]
    return out + jax.random.normal(noise_key, out.shape, out.dtype) * scale
