"""Distillation losses on a model's outputs: soft targets, labels, teacher ensembles, self-distillation.

Every loss is a pure function from arrays to a float32 scalar (inputs may be bfloat16 or float16;
the arithmetic is float32), so it composes with ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
Hyperparameters are keyword-only Python numbers or arrays (``jax.vmap`` over temperatures is one
call). Shapes are checked statically; hyperparameter ranges and a teacher's finiteness only when
concrete, since traced values cannot be inspected. Gradients reach both arguments unless stated
(the self-distillation target is a constant): differentiate the student only.

* Labels: :func:`cross_entropy`, the one cross-entropy of the library (training and search use it).
* Outputs: :func:`soft_target_loss`, :func:`distillation_loss`, :func:`ensemble_targets`,
  :func:`multi_teacher_loss`.
* A network teaching itself: :func:`self_distillation_loss`.

Features and relations between examples are in :mod:`hamjax.distill.features` and
:mod:`hamjax.distill.relations`; the mean teacher in :mod:`hamjax.distill.teacher`.

References:
  Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.
  Fukuda et al., "Efficient Knowledge Distillation from an Ensemble of Teachers", Interspeech 2017.
  Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via
  Self Distillation", ICCV 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_finite, is_traced
from hamjax._losses import cross_entropy
from hamjax.distill._numerics import f32, floored_log, mean_kl, scalar_hyperparameter

__all__ = [
    "cross_entropy",
    "distillation_loss",
    "ensemble_targets",
    "multi_teacher_loss",
    "self_distillation_loss",
    "soft_target_loss",
]


def _same_logits(where: str, a_name: str, a, b_name: str, b) -> None:
    if np.ndim(a) < 1 or np.shape(a) != np.shape(b):
        raise ValueError(
            f"{where}: {a_name} and {b_name} must have one shape (..., C), got {np.shape(a)} and {np.shape(b)}"
        )


def _check_labels(where: str, labels, logits) -> jax.Array:
    """Integer ``labels`` of shape ``logits.shape[:-1]``, checked to lie in ``[0, C)`` when concrete."""
    shape, classes, dtype = np.shape(logits)[:-1], np.shape(logits)[-1], jnp.asarray(labels).dtype
    if np.shape(labels) != shape or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{where}: labels must be integers of shape {shape}, got {dtype} {np.shape(labels)}")
    if not is_traced(labels) and np.size(labels):
        lo, hi = int(np.asarray(labels).min()), int(np.asarray(labels).max())
        if lo < 0 or hi >= classes:
            raise ValueError(f"{where}: labels must lie in [0, {classes}), got values in [{lo}, {hi}]")
    return jnp.asarray(labels)


def _soft_kl(student_logits, teacher_logits, t) -> jax.Array:
    """``T^2 * mean KL(softmax(teacher / T) || softmax(student / T))``."""
    log_p = jax.nn.log_softmax(f32(teacher_logits) / t, axis=-1)
    return t**2 * mean_kl(jnp.exp(log_p), log_p, jax.nn.log_softmax(f32(student_logits) / t, axis=-1))


def soft_target_loss(student_logits, teacher_logits, *, temperature=4.0) -> jax.Array:
    """Hinton's soft-target loss: ``T^2`` times the mean KL divergence of the softened distributions.

    With ``p = softmax(teacher / T)``, ``q = softmax(student / T)`` over the last axis and ``N`` rows::

        loss = T^2 * mean_rows sum_c p_c (log p_c - log q_c),    d loss / d student = T (q - p) / N

    The ``T^2`` keeps gradients comparable across temperatures: for large ``T`` the loss tends to
    ``mean_rows ||d - mean_c d||^2 / (2 C)`` with ``d = student - teacher`` (logit matching).

    Args:
      student_logits: ``(..., C)`` floating array.
      teacher_logits: ``(..., C)`` floating array.
      temperature: ``T > 0``, a scalar.

    Returns:
      A float32 scalar, 0 when the logits agree up to a per-row constant.

    Raises:
      ValueError: different shapes, or concrete ``temperature <= 0`` or non-finite ``teacher_logits``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> teacher = jnp.array([[2.0, 1.0, 0.0]])
      >>> float(distill.soft_target_loss(teacher + 5.0, teacher))  # a per-row shift changes nothing
      0.0
      >>> round(float(distill.soft_target_loss(0 * teacher, teacher, temperature=2.0)), 4)
      0.3137

    References:
      Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    where = "soft_target_loss"
    _same_logits(where, "student_logits", student_logits, "teacher_logits", teacher_logits)
    t = scalar_hyperparameter(where, "temperature", temperature)
    check_finite(where, "teacher_logits", teacher_logits)
    return _soft_kl(student_logits, teacher_logits, t)


def distillation_loss(student_logits, teacher_logits, labels, *, temperature=4.0, alpha=0.9) -> jax.Array:
    """Hinton's objective: ``alpha * soft_target_loss + (1 - alpha) * cross_entropy(student_logits, labels)``.

    The cross-entropy uses the student's logits at temperature 1.

    Args:
      student_logits: ``(..., C)`` floating array.
      teacher_logits: ``(..., C)`` floating array.
      labels: integer class indices of shape ``(...)``.
      temperature: ``T > 0``, a scalar.
      alpha: the soft-target weight in [0, 1], a scalar.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: mismatched shapes, non-integer labels, or concrete out-of-range labels,
        ``temperature``, ``alpha`` or non-finite ``teacher_logits``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
      >>> round(float(distill.distillation_loss(logits, logits, jnp.array([0, 1]), alpha=0.5)), 4)
      0.0635

    References:
      Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    where = "distillation_loss"
    _same_logits(where, "student_logits", student_logits, "teacher_logits", teacher_logits)
    labels = _check_labels(where, labels, student_logits)
    t = scalar_hyperparameter(where, "temperature", temperature)
    a = scalar_hyperparameter(where, "alpha", alpha, unit=True)
    check_finite(where, "teacher_logits", teacher_logits)
    return a * _soft_kl(student_logits, teacher_logits, t) + (1.0 - a) * cross_entropy(student_logits, labels)


def _ensemble(where: str, teacher_logits, t, weights) -> jax.Array:
    """The weighted mean of the teachers' ``softmax(logits / T)``, float32 ``(..., C)``."""
    if isinstance(teacher_logits, list | tuple):
        shapes = [np.shape(x) for x in teacher_logits]
        if not shapes or len(set(shapes)) != 1 or not shapes[0]:
            raise ValueError(f"{where}: teacher_logits must be K >= 1 arrays of one shape (..., C), got {shapes}")
        stacked = jnp.stack([f32(x) for x in teacher_logits])
    elif np.ndim(teacher_logits) < 2:
        raise ValueError(f"{where}: stacked teacher_logits must be (K, ..., C), got shape {np.shape(teacher_logits)}")
    else:
        stacked = f32(teacher_logits)
    check_finite(where, "teacher_logits", stacked)
    k = stacked.shape[0]
    if weights is not None and np.shape(weights) != (k,):
        raise ValueError(f"{where}: weights must have length K = {k} (one per teacher), got shape {np.shape(weights)}")
    if weights is not None and not is_traced(weights):
        v = np.asarray(weights, np.float64)
        if not (np.all(np.isfinite(v)) and np.all(v >= 0) and v.sum() > 0):
            raise ValueError(f"{where}: weights must be finite, >= 0 and have a positive sum, got {v.tolist()}")
    w = jnp.ones((k,), jnp.float32) if weights is None else f32(weights)
    probs = jax.nn.softmax(stacked / t, axis=-1)
    return jnp.sum((w / jnp.sum(w)).reshape((k,) + (1,) * (probs.ndim - 1)) * probs, axis=0)


def ensemble_targets(teacher_logits, *, temperature=1.0, weights=None) -> jax.Array:
    """Soft targets of a teacher ensemble: ``sum_k w_k softmax(teacher_k / T)`` with ``sum_k w_k = 1``.

    Args:
      teacher_logits: ``K`` arrays of one shape ``(..., C)``, or one ``(K, ..., C)`` array.
      temperature: ``T > 0``, a scalar.
      weights: ``(K,)`` weights, >= 0 with a positive sum (normalised here); ``None`` is uniform.

    Returns:
      Float32 ``(..., C)`` probabilities.

    Raises:
      ValueError: mismatched shapes, or concrete bad ``temperature``, ``weights`` or non-finite logits.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> a = jnp.array([[9.0, -9.0]])
      >>> [round(v, 3) for v in distill.ensemble_targets([a, -a], weights=[3.0, 1.0])[0].tolist()]
      [0.75, 0.25]

    References:
      Hinton, Vinyals and Dean, 2015 (section 3); Fukuda et al., Interspeech 2017.
    """
    t = scalar_hyperparameter("ensemble_targets", "temperature", temperature)
    return _ensemble("ensemble_targets", teacher_logits, t, weights)


def multi_teacher_loss(student_logits, teacher_logits, *, temperature=4.0, weights=None) -> jax.Array:
    """Distillation from an ensemble: ``T^2 * mean KL(ensemble_targets || softmax(student / T))``.

    With one teacher this is :func:`soft_target_loss`.

    Args:
      student_logits: ``(..., C)`` floating array.
      teacher_logits: ``K`` arrays of the student's shape, or one ``(K, ..., C)`` array.
      temperature: ``T > 0``, a scalar.
      weights: ``(K,)`` teacher weights, see :func:`ensemble_targets`.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: mismatched shapes, or concrete bad ``temperature``, ``weights`` or non-finite logits.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> a = jnp.array([[1.0, 0.0]])
      >>> float(distill.multi_teacher_loss(jnp.zeros((1, 2)), [a, a[:, ::-1]], temperature=1.0))
      0.0

    References:
      Fukuda et al., "Efficient Knowledge Distillation from an Ensemble of Teachers", Interspeech 2017.
    """
    where = "multi_teacher_loss"
    t = scalar_hyperparameter(where, "temperature", temperature)
    target = _ensemble(where, teacher_logits, t, weights)
    _same_logits(where, "student_logits", student_logits, "each of teacher_logits", target)
    return t**2 * mean_kl(target, floored_log(target), jax.nn.log_softmax(f32(student_logits) / t, axis=-1))


def self_distillation_loss(
    exit_logits: Sequence[Any], final_logits, labels, *, temperature=3.0, alpha=0.5
) -> jax.Array:
    """Be Your Own Teacher: the deepest classifier of a network teaches its shallow exits.

    ``loss = CE(final) + mean_i [(1 - alpha) CE(exit_i) + alpha T^2 KL(softmax(sg(final) / T) || softmax(exit_i / T))]``
    with ``sg = jax.lax.stop_gradient``: ``final_logits`` get gradient from their own cross-entropy
    only. The paper's optional feature hints are :func:`hamjax.distill.feature_loss`.

    Args:
      exit_logits: a non-empty list of ``(N, C)`` arrays, one per shallow exit.
      final_logits: ``(N, C)`` logits of the deepest classifier.
      labels: ``(N,)`` integer class indices.
      temperature: ``T > 0``, a scalar.
      alpha: the distillation weight in [0, 1], a scalar.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: an empty ``exit_logits``, mismatched shapes, non-integer labels, or concrete
        out-of-range labels, ``temperature``, ``alpha`` or non-finite ``final_logits``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> final = jnp.array([[2.0, 0.0]])
      >>> round(float(distill.self_distillation_loss([final], final, jnp.array([0]), alpha=0.0)), 4)
      0.2539

    References:
      Zhang et al., "Be Your Own Teacher", ICCV 2019.
    """
    where = "self_distillation_loss"
    if not isinstance(exit_logits, list | tuple) or not exit_logits:
        got = exit_logits if isinstance(exit_logits, list | tuple) else type(exit_logits).__name__
        raise ValueError(f"{where}: exit_logits must be a non-empty list of (N, C) arrays, got {got}")
    for i, x in enumerate(exit_logits):
        _same_logits(where, f"exit_logits[{i}]", x, "final_logits", final_logits)
    labels = _check_labels(where, labels, final_logits)
    t = scalar_hyperparameter(where, "temperature", temperature)
    a = scalar_hyperparameter(where, "alpha", alpha, unit=True)
    check_finite(where, "final_logits", final_logits)
    target = jax.lax.stop_gradient(final_logits)
    terms = [(1.0 - a) * cross_entropy(x, labels) + a * _soft_kl(x, target, t) for x in exit_logits]
    return cross_entropy(final_logits, labels) + sum(terms) / len(terms)
