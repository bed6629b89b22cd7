"""Targets as probability rows: label smoothing, mixup and cutmix.

:func:`soft_targets` turns integer labels into smoothed one-hot rows; :func:`mixup`
and :func:`cutmix` mix each example with a partner from a random permutation
of the batch and mix the target rows in the same proportion.
:func:`hamjax.distill.cross_entropy` scores logits against such rows.

Both mixings draw one ``lam ~ Beta(alpha, alpha)`` per example (not one per
batch), so a batch sees a spread of mixing proportions at every step.
``alpha`` may be a traced scalar; a concrete one must be ``> 0`` (a
configuration turns mixing off by not calling these).

References:
  Szegedy et al., "Rethinking the Inception Architecture for Computer
  Vision", CVPR 2016 (label smoothing). https://arxiv.org/abs/1512.00567
  Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
  https://arxiv.org/abs/1710.09412
  Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers
  with Localizable Features", ICCV 2019. https://arxiv.org/abs/1905.04899
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax._checks import check_fraction, check_int, check_positive, is_traced
from hamjax.augment.inputs import check_images, check_key
from hamjax.augment.pixel import box_masks

__all__ = ["cutmix", "mixup", "soft_targets"]


def _describe(value: Any) -> str:
    return f"an array of shape {np.shape(value)} and dtype {getattr(value, 'dtype', type(value).__name__)}"


def soft_targets(y: jax.Array, num_classes: int, smoothing=0.0) -> jax.Array:
    """Probability rows of integer labels with label smoothing, as ``optax.smooth_labels``.

    ``targets = (1 - smoothing) * one_hot(y) + smoothing / num_classes``.
    Probability rows (floating ``(..., num_classes)``) are smoothed the same
    way, so smoothing composes with mixed targets.

    Args:
      y: integer labels in ``[0, num_classes)`` of shape ``(N,)`` (any
        shape), or floating probability rows of shape ``(..., num_classes)``.
      num_classes: the number of classes, ``>= 2``.
      smoothing: in ``[0, 1)`` (may be traced).

    Returns:
      float32 rows of shape ``y.shape + (num_classes,)`` (integer labels) or
      ``y.shape`` (rows), each summing to 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> (10 * soft_targets(jnp.array([0, 2]), 3, smoothing=0.3)).round()
      Array([[8., 1., 1.],
             [1., 1., 8.]], dtype=float32)
    """
    num_classes = check_int("soft_targets", "num_classes", num_classes, minimum=2)
    check_fraction("soft_targets", "smoothing", smoothing)
    dtype = getattr(y, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and np.ndim(y) >= 1:
        if np.shape(y)[-1] != num_classes:
            raise ValueError(
                f"soft_targets: y must be integer labels or rows of {num_classes} probabilities, got {_describe(y)}"
            )
        rows = jnp.asarray(y, jnp.float32)
    elif dtype is not None and jnp.issubdtype(dtype, jnp.integer):
        if not is_traced(y) and np.size(y):
            low, high = int(np.min(y)), int(np.max(y))
            if low < 0 or high >= num_classes:
                raise ValueError(
                    f"soft_targets: y must hold labels in [0, {num_classes}), got labels in [{low}, {high}]"
                )
        rows = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    else:
        raise ValueError(f"soft_targets: y must be integer labels or floating probability rows, got {_describe(y)}")
    return optax.smooth_labels(rows, jnp.asarray(smoothing, jnp.float32))


def _check_pair(where: str, key, x, targets, alpha) -> None:
    check_key(where, key)
    if not is_traced(alpha):
        check_positive(where, "alpha", alpha)
    elif np.ndim(alpha) != 0:
        raise ValueError(f"{where}: alpha must be a scalar > 0, got a traced array of shape {np.shape(alpha)}")
    dtype = getattr(targets, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or np.ndim(targets) != 2:
        raise ValueError(
            f"{where}: targets must be floating probability rows of shape (N, C) "
            f"(hamjax.augment.soft_targets), got {_describe(targets)}"
        )
    if np.ndim(x) < 1 or np.shape(x)[0] != np.shape(targets)[0]:
        raise ValueError(
            f"{where}: x and targets must have the same number of rows, got {_describe(x)} and {_describe(targets)}"
        )


def mixup(key, x: jax.Array, targets: jax.Array, alpha) -> tuple[jax.Array, jax.Array]:
    """Mixes each example and its target row with a partner's: ``lam * own + (1 - lam) * partner``.

    Partners come from one random permutation of the batch (an example may
    draw itself); ``lam ~ Beta(alpha, alpha)`` is drawn per example.

    Args:
      key: a PRNG key.
      x: floating inputs of shape ``(N, ...)`` (images or any features).
      targets: floating probability rows ``(N, C)`` (:func:`soft_targets`).
      alpha: the Beta distribution's parameter, ``> 0`` (may be traced);
        small values mix little, 1 mixes uniformly.

    Returns:
      ``(x, targets)``: mixed inputs of ``x``'s shape and dtype, and mixed
      rows of ``targets``' shape and dtype, still summing to 1.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x, t = jnp.ones((4, 8, 8, 1)), soft_targets(jnp.array([0, 1, 2, 3]), 4)
      >>> mx, mt = mixup(jax.random.key(0), x, t, 0.2)
      >>> mx.shape, mt.sum(axis=1).round(4).tolist()
      ((4, 8, 8, 1), [1.0, 1.0, 1.0, 1.0])
    """
    _check_pair("mixup", key, x, targets, alpha)
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"mixup: x must be a floating array of shape (N, ...), got {_describe(x)}")
    return _mixup(key, jnp.asarray(x), jnp.asarray(targets), alpha)


@jax.jit
def _mixup(key, x: jax.Array, targets: jax.Array, alpha) -> tuple[jax.Array, jax.Array]:
    n = x.shape[0]
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha, (n,), jnp.float32)
    partner = jax.random.permutation(k_perm, n)
    wide = x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x  # bfloat16 mixes in float32, rounds once
    lam_x = lam.astype(wide.dtype).reshape((n,) + (1,) * (x.ndim - 1))
    lam_t = lam.astype(targets.dtype)[:, None]
    mixed_x = (lam_x * wide + (1 - lam_x) * wide[partner]).astype(x.dtype)
    mixed_t = lam_t * targets + (1 - lam_t) * targets[partner]
    return mixed_x, mixed_t


def cutmix(key, x: jax.Array, targets: jax.Array, alpha) -> tuple[jax.Array, jax.Array]:
    """Pastes a box of a partner image into each image; target rows mix by the box's actual area.

    Per example ``lam ~ Beta(alpha, alpha)``; the box has sides
    ``sqrt(1 - lam)`` times the image's and a centre drawn uniformly from
    its pixels, and is cut where it crosses the border. With ``a`` the
    fraction of pixels pasted, the target row is
    ``(1 - a) * own + a * partner``. Partners come from one random
    permutation of the batch.

    Args:
      key: a PRNG key.
      x: floating images ``(N, H, W, C)`` or ``(N, H, W)``.
      targets: floating probability rows ``(N, C)`` (:func:`soft_targets`).
      alpha: the Beta distribution's parameter, ``> 0`` (may be traced).

    Returns:
      ``(x, targets)`` of the inputs' shapes and dtypes.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x, t = jnp.ones((4, 8, 8, 1)), soft_targets(jnp.array([0, 1, 2, 3]), 4)
      >>> mx, mt = cutmix(jax.random.key(0), x, t, 1.0)
      >>> mx.shape, mt.sum(axis=1).round(4).tolist()
      ((4, 8, 8, 1), [1.0, 1.0, 1.0, 1.0])
    """
    _check_pair("cutmix", key, x, targets, alpha)
    images = check_images("cutmix", "x", x)
    mixed_x, mixed_t = _cutmix(key, images, jnp.asarray(targets), alpha)
    return mixed_x.reshape(x.shape), mixed_t


@jax.jit
def _cutmix(key, images: jax.Array, targets: jax.Array, alpha) -> tuple[jax.Array, jax.Array]:
    n, h, w, _ = images.shape
    k_lam, k_perm, k_box = jax.random.split(key, 3)
    lam = jax.random.beta(k_lam, alpha, alpha, (n,), jnp.float32)
    partner = jax.random.permutation(k_perm, n)
    sides = jnp.sqrt(1 - lam)[:, None] * jnp.array([[h, w]], jnp.float32)
    box = box_masks(k_box, n, (h, w), sides)
    area = box.mean(axis=(1, 2), dtype=jnp.float32).astype(targets.dtype)[:, None]
    mixed_x = jnp.where(box[..., None], images[partner], images)
    return mixed_x, (1 - area) * targets + area * targets[partner]
