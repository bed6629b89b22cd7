"""Augmentation: pure, jittable, vmappable functions of ``(key, batch)``, mixing and soft targets.

* :mod:`~hamjax.augment.warp`: one batched affine :func:`warp` (bilinear, zero fill) and the
  matrices of :func:`translation`, :func:`rotation` and :func:`zoom`.
* :mod:`~hamjax.augment.geometric`: :func:`shift`, :func:`crop`, :func:`rotate`, :func:`scale`,
  each drawing per-example parameters, and their ``*_matrices`` so chains warp once.
* :mod:`~hamjax.augment.pixel`: :func:`cutout` (:func:`cutout_masks`, :func:`box_masks`) and :func:`noise`.
* :mod:`~hamjax.augment.policy`: :func:`randaugment`, whose magnitude is an array leaf a
  population can search.
* :mod:`~hamjax.augment.spec`: :func:`parse` turns ``"shift=2,rotate=10,cutout=8"`` into an
  :class:`Augmentation`, a callable ``(key, x) -> x`` named by its spec.
* :mod:`~hamjax.augment.mixing`: :func:`soft_targets` (label smoothing), :func:`mixup` and
  :func:`cutmix`, which return probability rows for :func:`hamjax.distill.cross_entropy`.
* :mod:`~hamjax.augment.inputs`: the checks they share and :data:`RANGES`, each strength's range.

A strength (pixels, degrees, amount, side, standard deviation, magnitude,
``alpha``) may be a traced scalar, so ``jax.vmap`` over it augments for a
whole population in one call; concrete strengths are checked before tracing.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from hamjax import augment
  >>> x = jnp.ones((8, 28, 28, 1))
  >>> augment.parse("shift=2,rotate=10,cutout=8")(jax.random.key(0), x).shape
  (8, 28, 28, 1)
"""

from hamjax.augment.geometric import (
    crop,
    crop_matrices,
    rotate,
    rotate_matrices,
    scale,
    scale_matrices,
    shift,
    shift_matrices,
)
from hamjax.augment.inputs import RANGES, Range, check_images, check_key, check_strength
from hamjax.augment.mixing import cutmix, mixup, soft_targets
from hamjax.augment.pixel import box_masks, cutout, cutout_masks, noise
from hamjax.augment.policy import RANDAUGMENT_OPS, randaugment
from hamjax.augment.spec import Augmentation, parse
from hamjax.augment.warp import rotation, translation, warp, zoom

__all__ = [
    "RANDAUGMENT_OPS",
    "RANGES",
    "Augmentation",
    "Range",
    "box_masks",
    "check_images",
    "check_key",
    "check_strength",
    "crop",
    "crop_matrices",
    "cutmix",
    "cutout",
    "cutout_masks",
    "mixup",
    "noise",
    "parse",
    "randaugment",
    "rotate",
    "rotate_matrices",
    "rotation",
    "scale",
    "scale_matrices",
    "shift",
    "shift_matrices",
    "soft_targets",
    "translation",
    "warp",
    "zoom",
]
