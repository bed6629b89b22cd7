"""The per-member hyperparameters of a population: their names and ranges, the learning-rate schedule, mixup.

:data:`HYPERPARAMETERS` are what :class:`hamjax.search.population.Population`
holds as ``(P,)`` arrays (:func:`check_hparams` checks them). :class:`hamjax.search.population.Population` calls these inside its
per-member step, with that member's traced scalars, so members with
different warm-ups, decays or mixup strengths train in one compiled call:

* :func:`learning_rate_scale`: the factor on a member's learning rate at its
  own optimizer step ``t`` (``warmup_steps``: a linear ramp
  ``min(1, (t + 1) / warmup_steps)``; ``decay_steps``: a cosine decay to 0
  that starts after the warm-up and ends at step ``decay_steps``);
* :func:`mix`: mixup with ``lam ~ Beta(a, a)`` per example
  (:func:`hamjax.augment.mixup`'s numerics), the member's batch unchanged
  where ``a`` is 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hamjax import augment
from hamjax.quant import MAX_BITS, MIN_BITS

__all__ = [
    "HYPERPARAMETERS",
    "OPTIMIZER_HYPERPARAMETERS",
    "SCHEDULE_HYPERPARAMETERS",
    "TRANSFORM_HYPERPARAMETERS",
    "check_hparams",
    "learning_rate_scale",
    "mix",
]

OPTIMIZER_HYPERPARAMETERS = ("learning_rate", "weight_decay")
TRANSFORM_HYPERPARAMETERS = ("sparsity", "bits", "temperature", "alpha", "augment", "label_smoothing", "mixup")
SCHEDULE_HYPERPARAMETERS = ("warmup_steps", "decay_steps")
HYPERPARAMETERS = OPTIMIZER_HYPERPARAMETERS + TRANSFORM_HYPERPARAMETERS + SCHEDULE_HYPERPARAMETERS

# name -> (check of a concrete value, what the error says it must be)
RANGES = {
    "learning_rate": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "sparsity": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    "bits": (
        lambda v: (v >= MIN_BITS) & (v <= MAX_BITS) & (v == np.round(v)),
        f"an integer in [{MIN_BITS}, {MAX_BITS}]",
    ),
    "temperature": (lambda v: v > 0, "> 0"),
    "alpha": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
    "augment": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
    "label_smoothing": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    "mixup": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: (v >= 0) & (v == np.round(v)), "an integer >= 0"),
    "decay_steps": (lambda v: (v >= 0) & (v == np.round(v)), "an integer >= 0"),
}


def check_hparams(where: str, hparams: Mapping, p: int) -> dict:
    """``name -> (P,)`` float32 arrays of ``hparams`` (scalars broadcast), each checked against :data:`RANGES`.

    Args:
      where: the caller's name for the error message.
      hparams: ``name -> scalar or (P,) array``, names from :data:`HYPERPARAMETERS`.
      p: the member count.

    Returns:
      The arrays, by name (traced ones unchecked).

    Raises:
      ValueError: an unknown name, a wrong shape, or a concrete value out of its range.

    Examples:
      >>> check_hparams("f", {"warmup_steps": 10}, 2)["warmup_steps"].tolist()
      [10.0, 10.0]
    """
    unknown = sorted(set(hparams) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"{where}: unknown hyperparameters {unknown}; expected among {HYPERPARAMETERS}")
    out = {}
    for name, value in hparams.items():
        arr = jnp.asarray(value, jnp.float32)
        if arr.ndim == 0:
            arr = jnp.full((p,), arr)
        if arr.shape != (p,):
            raise ValueError(f"{where}: hyperparameter {name} must have shape ({p},), got {arr.shape}")
        if not isinstance(arr, jax.core.Tracer):
            check, what = RANGES[name]
            v = np.asarray(arr)
            if not bool(np.all(np.isfinite(v) & check(v))):
                raise ValueError(f"{where}: hyperparameter {name} must be finite and {what}, got {v}")
        out[name] = arr
    return out


def learning_rate_scale(count, hparams: Mapping) -> jax.Array:
    """The factor on a member's learning rate at its step ``count`` (0 for its first update).

    Args:
      count: the member's optimizer steps taken so far (an int scalar, may be traced).
      hparams: the member's scalars; ``warmup_steps`` (0: no warm-up) and
        ``decay_steps`` (0: no decay) are read when present.

    Returns:
      A float32 scalar: ``min(1, (count + 1) / warmup_steps)`` times
      ``0.5 * (1 + cos(pi * p))`` with ``p = clip((count - warmup_steps) /
      (decay_steps - warmup_steps), 0, 1)``; 1 where neither applies.

    Examples:
      >>> import jax.numpy as jnp
      >>> [round(float(learning_rate_scale(t, {"warmup_steps": jnp.float32(4)})), 2) for t in range(5)]
      [0.25, 0.5, 0.75, 1.0, 1.0]
      >>> hp = {"warmup_steps": jnp.float32(2), "decay_steps": jnp.float32(6)}
      >>> [round(float(learning_rate_scale(t, hp)), 2) for t in range(6)]
      [0.5, 1.0, 1.0, 0.85, 0.5, 0.15]
    """
    t = jnp.asarray(count).astype(jnp.float32)
    scale = jnp.ones((), jnp.float32)
    warm = jnp.asarray(hparams.get("warmup_steps", 0.0), jnp.float32)
    if "warmup_steps" in hparams:
        scale = jnp.where(warm > 0, jnp.minimum(1.0, (t + 1) / jnp.maximum(warm, 1.0)), scale)
    if "decay_steps" in hparams:
        decay = jnp.asarray(hparams["decay_steps"], jnp.float32)
        progress = jnp.clip((t - warm) / jnp.maximum(decay - warm, 1.0), 0.0, 1.0)
        scale = jnp.where(decay > 0, scale * 0.5 * (1 + jnp.cos(jnp.pi * progress)), scale)
    return scale


def mix(key, x: jax.Array, targets: jax.Array, strength) -> tuple[jax.Array, jax.Array]:
    """Mixup of one member's batch with ``lam ~ Beta(strength, strength)`` per example; unchanged at strength 0.

    Args:
      key: a PRNG key (members that share it draw the same partners).
      x: floating inputs ``(N, ...)``.
      targets: floating probability rows ``(N, C)``.
      strength: the Beta parameter, a scalar ``>= 0`` (may be traced); 0 turns mixing off.

    Returns:
      ``(x, targets)`` as :func:`hamjax.augment.mixup` returns them, or the inputs where ``strength`` is 0.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x, t = jnp.arange(8.0).reshape(4, 2), jnp.eye(4)
      >>> bool((mix(jax.random.key(0), x, t, 0.0)[1] == t).all()), mix(jax.random.key(0), x, t, 0.4)[1].shape
      (True, (4, 4))
    """
    strength = jnp.asarray(strength, jnp.float32)
    on = strength > 0
    mixed_x, mixed_t = augment.mixup(key, x, targets, jnp.where(on, strength, 1.0))
    return jnp.where(on, mixed_x, x), jnp.where(on, mixed_t, targets)
