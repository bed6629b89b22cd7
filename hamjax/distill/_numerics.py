"""What the distillation losses share: float32 casts, floors against log(0) and 0/0, the hyperparameter check.

Every loss of :mod:`hamjax.distill` computes in float32 whatever its inputs' dtype, floors
probabilities and norms at :data:`EPS` so that zeros give finite values and gradients, and takes
its hyperparameters as scalars that are range-checked only when concrete.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_fraction, check_positive, is_traced

EPS = 1e-12


def f32(x) -> jax.Array:
    """``x`` as a float32 array."""
    return jnp.asarray(x).astype(jnp.float32)


def floored_log(p) -> jax.Array:
    """``log(max(p, 1e-12))``: zero probabilities give finite values and gradients."""
    return jnp.log(jnp.maximum(p, EPS))


def l2_normalize(x) -> jax.Array:
    """``x / max(||x||, 1e-12)`` along the last axis."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), EPS**2))


def mean_kl(p, log_p, log_q) -> jax.Array:
    """Mean over the leading axes of ``KL(p || q) = sum_c p (log p - log q)`` over the last axis."""
    return jnp.mean(jnp.sum(p * (log_p - log_q), axis=-1))


def scalar_hyperparameter(where: str, arg: str, value, *, unit: bool = False) -> jax.Array:
    """``value`` as a float32 scalar; when concrete, checked to be > 0, or in [0, 1] with ``unit``."""
    if np.ndim(value) != 0:
        raise ValueError(f"{where}: {arg} must be a scalar, got shape {np.shape(value)}")
    if unit:
        check_fraction(where, arg, value, closed=True)
    elif not is_traced(value):
        check_positive(where, arg, value)
    return jnp.asarray(value, jnp.float32)
