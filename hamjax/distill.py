"""Knowledge distillation losses: a student learns from a teacher's outputs, features or relations.

Every loss is a pure function from arrays to a float32 scalar (inputs may be bfloat16 or float16;
the arithmetic is float32), so it composes with ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
Hyperparameters are keyword-only Python numbers or arrays (``jax.vmap`` over temperatures is one
call). Shapes are checked statically; hyperparameter ranges and a teacher's finiteness only when
concrete, since traced values cannot be inspected. Gradients reach both arguments unless stated
(RKD teachers and the self-distillation target are constants): differentiate the student only.

* Outputs: :func:`soft_target_loss`, :func:`distillation_loss`, :func:`ensemble_targets`, :func:`multi_teacher_loss`.
* Features: :func:`feature_loss` with :func:`init_projection` / :func:`project` (FitNets hints),
  :func:`attention_map`, :func:`attention_transfer_loss`, :func:`attention_probs_loss` (transformers).
* Relations between examples: :func:`rkd_distance_loss`, :func:`rkd_angle_loss`.
* A network teaching itself: :func:`self_distillation_loss`, :func:`ema_update` (a mean teacher).

References:
  Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.
  Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
  Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017.
  Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
  Transformers", NeurIPS 2020; Jiao et al., "TinyBERT: Distilling BERT for Natural Language
  Understanding", Findings of EMNLP 2020.
  Park et al., "Relational Knowledge Distillation", CVPR 2019.
  Fukuda et al., "Efficient Knowledge Distillation from an Ensemble of Teachers", Interspeech 2017.
  Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via
  Self Distillation", ICCV 2019.
  Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax._checks import check_int

__all__ = [
    "attention_map",
    "attention_probs_loss",
    "attention_transfer_loss",
    "distillation_loss",
    "ema_update",
    "ensemble_targets",
    "feature_loss",
    "init_projection",
    "multi_teacher_loss",
    "project",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "self_distillation_loss",
    "soft_target_loss",
]

_EPS = 1e-12


def _check_finite(name: str, x) -> None:
    """Raises if a concrete ``x`` holds NaN or inf (``name`` is ``"function: argument"``); traced ``x`` passes."""
    if not isinstance(x, jax.core.Tracer):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
        if bad:
            raise ValueError(f"{name} contain {bad} non-finite values (NaN or inf) of {np.size(x)}; expected finite")


def _hyper(fn: str, arg: str, value, *, unit: bool = False) -> jax.Array:
    """``value`` as a float32 scalar; when concrete, checked to lie in [0, 1] (``unit``) or be > 0."""
    if np.ndim(value) != 0:
        raise ValueError(f"{fn}: {arg} must be a scalar, got shape {np.shape(value)}")
    if not isinstance(value, jax.core.Tracer):
        v = float(np.asarray(value))
        if not ((0.0 <= v <= 1.0) if unit else v > 0.0):
            raise ValueError(f"{fn}: {arg} must be {'in [0, 1]' if unit else '> 0'}, got {value!r}")
    return jnp.asarray(value, jnp.float32)


def _same_logits(fn: str, a_name: str, a, b_name: str, b) -> None:
    if np.ndim(a) < 1 or np.shape(a) != np.shape(b):
        raise ValueError(
            f"{fn}: {a_name} and {b_name} must have one shape (..., C), got {np.shape(a)} and {np.shape(b)}"
        )


def _check_labels(fn: str, labels, logits) -> jax.Array:
    """Integer ``labels`` of shape ``logits.shape[:-1]``, checked to lie in ``[0, C)`` when concrete."""
    shape, classes, dtype = np.shape(logits)[:-1], np.shape(logits)[-1], jnp.asarray(labels).dtype
    if np.shape(labels) != shape or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{fn}: labels must be integers of shape {shape}, got {dtype} {np.shape(labels)}")
    if not isinstance(labels, jax.core.Tracer) and np.size(labels):
        lo, hi = int(np.asarray(labels).min()), int(np.asarray(labels).max())
        if lo < 0 or hi >= classes:
            raise ValueError(f"{fn}: labels must lie in [0, {classes}), got values in [{lo}, {hi}]")
    return jnp.asarray(labels)


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _log(p) -> jax.Array:
    """``log(max(p, 1e-12))``: zero probabilities give finite values and gradients."""
    return jnp.log(jnp.maximum(p, _EPS))


def _l2_normalize(x) -> jax.Array:
    """``x / max(||x||, 1e-12)`` along the last axis."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS**2))


def _kl(p, log_p, log_q) -> jax.Array:
    """Mean over the leading axes of ``KL(p || q) = sum_c p (log p - log q)``."""
    return jnp.mean(jnp.sum(p * (log_p - log_q), axis=-1))


def _soft_kl(student_logits, teacher_logits, t) -> jax.Array:
    """``T^2 * mean KL(softmax(teacher / T) || softmax(student / T))``."""
    log_p = jax.nn.log_softmax(_f32(teacher_logits) / t, axis=-1)
    return t**2 * _kl(jnp.exp(log_p), log_p, jax.nn.log_softmax(_f32(student_logits) / t, axis=-1))


def _cross_entropy(logits, labels) -> jax.Array:
    log_q = jax.nn.log_softmax(_f32(logits), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_q, labels[..., None], axis=-1))


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
    fn = "soft_target_loss"
    _same_logits(fn, "student_logits", student_logits, "teacher_logits", teacher_logits)
    t = _hyper(fn, "temperature", temperature)
    _check_finite(f"{fn}: teacher_logits", teacher_logits)
    return _soft_kl(student_logits, teacher_logits, t)


def distillation_loss(student_logits, teacher_logits, labels, *, temperature=4.0, alpha=0.9) -> jax.Array:
    """Hinton's objective: ``alpha * soft_target_loss + (1 - alpha) * mean CE(student_logits, labels)``.

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
    fn = "distillation_loss"
    _same_logits(fn, "student_logits", student_logits, "teacher_logits", teacher_logits)
    labels = _check_labels(fn, labels, student_logits)
    t, a = _hyper(fn, "temperature", temperature), _hyper(fn, "alpha", alpha, unit=True)
    _check_finite(f"{fn}: teacher_logits", teacher_logits)
    return a * _soft_kl(student_logits, teacher_logits, t) + (1.0 - a) * _cross_entropy(student_logits, labels)


def init_projection(key, student_dim: int, teacher_dim: int, *, dtype=jnp.float32) -> dict[str, jax.Array]:
    """A trainable linear map from student to teacher width (FitNets' regressor) for :func:`feature_loss`.

    ``kernel ~ Normal(0, 1 / student_dim)`` (LeCun normal), ``bias = 0``.

    Args:
      key: a PRNG key.
      student_dim, teacher_dim: the feature widths, integers >= 1.
      dtype: the parameters' dtype.

    Returns:
      ``{"kernel": (student_dim, teacher_dim), "bias": (teacher_dim,)}``.

    Raises:
      ValueError: a width that is not an integer >= 1.

    Examples:
      >>> import jax
      >>> from hamjax import distill
      >>> [x.shape for x in distill.init_projection(jax.random.key(0), 4, 8).values()]
      [(4, 8), (8,)]

    References:
      Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    """
    student_dim = check_int("init_projection", "student_dim", student_dim, minimum=1)
    teacher_dim = check_int("init_projection", "teacher_dim", teacher_dim, minimum=1)
    kernel = jax.random.normal(key, (student_dim, teacher_dim), jnp.float32) / np.sqrt(student_dim)
    return {"kernel": kernel.astype(dtype), "bias": jnp.zeros((teacher_dim,), dtype)}


def project(projection: dict[str, jax.Array], features) -> jax.Array:
    """Apply :func:`init_projection` params on the last axis: ``features @ kernel + bias`` in float32.

    Args:
      projection: ``{"kernel": (D_s, D_t), "bias": (D_t,)}``.
      features: ``(..., D_s)`` array.

    Returns:
      A float32 ``(..., D_t)`` array.

    Raises:
      ValueError: shapes that do not fit together.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import distill
      >>> distill.project(distill.init_projection(jax.random.key(0), 4, 8), jnp.ones((2, 3, 4))).shape
      (2, 3, 8)
    """
    k, b, f = np.shape(projection["kernel"]), np.shape(projection["bias"]), np.shape(features)
    if len(k) != 2 or b != k[1:] or f[-1:] != k[:1]:
        raise ValueError(f"project: expected kernel (D_s, D_t), bias (D_t,), features (..., D_s), got {k}, {b}, {f}")
    y = jnp.tensordot(_f32(features), _f32(projection["kernel"]), axes=1)
    return y + _f32(projection["bias"])[(None,) * (y.ndim - 1)]


def feature_loss(student_features, teacher_features, *, projection=None, normalize: bool = False) -> jax.Array:
    """FitNets hint loss: ``mean (r(student) - teacher)^2`` with ``r`` the identity or :func:`project`.

    With ``normalize=True`` both sides are first L2-normalised along the last axis (norm floor 1e-12).

    Args:
      student_features: ``(..., D_s)`` array.
      teacher_features: ``(..., D_t)`` array with the same leading dimensions.
      projection: ``None`` when ``D_s == D_t``, else :func:`init_projection` params, kernel ``(D_s, D_t)``.
      normalize: compare directions instead of raw values.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: different leading dimensions, different widths and no projection, a kernel
        that is not ``(D_s, D_t)``, or concrete non-finite ``teacher_features``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> x = jnp.ones((2, 4))
      >>> float(distill.feature_loss(x, 0 * x)), float(distill.feature_loss(x, 3 * x, normalize=True))
      (1.0, 0.0)

    References:
      Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    """
    fn = "feature_loss"
    s, t = np.shape(student_features), np.shape(teacher_features)
    if not s or not t or s[:-1] != t[:-1]:
        raise ValueError(f"{fn}: student_features and teacher_features must share leading dimensions, got {s} and {t}")
    if projection is None and s[-1] != t[-1]:
        raise ValueError(
            f"{fn}: student_features {s} and teacher_features {t} differ in width; "
            f"pass projection=init_projection(key, {s[-1]}, {t[-1]})"
        )
    if projection is not None and np.shape(projection["kernel"]) != (s[-1], t[-1]):
        k = np.shape(projection["kernel"])
        raise ValueError(f"{fn}: projection kernel must be (student_dim, teacher_dim) = {(s[-1], t[-1])}, got {k}")
    _check_finite(f"{fn}: teacher_features", teacher_features)
    student = _f32(student_features) if projection is None else project(projection, student_features)
    teacher = _f32(teacher_features)
    if normalize:
        student, teacher = _l2_normalize(student), _l2_normalize(teacher)
    return jnp.mean((student - teacher) ** 2)


def attention_map(features, *, p=2) -> jax.Array:
    """Spatial attention: ``normalize(flatten(sum_c |A[n, ..., c]|^p))``, unit L2 norm per example.

    Works for conv maps ``(N, H, W, C)`` and token features ``(N, T, D)``.

    Args:
      features: ``(N, *spatial, C)`` array, rank >= 3.
      p: the power, > 0 (a Python int uses an exact integer power).

    Returns:
      A float32 ``(N, prod(spatial))`` array with unit-norm rows (all-zero features give zeros).

    Raises:
      ValueError: rank below 3 or concrete ``p <= 0``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> m = distill.attention_map(jnp.ones((2, 4, 4, 8)))
      >>> m.shape, round(float(jnp.linalg.norm(m[0])), 6)
      ((2, 16), 1.0)

    References:
      Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017.
    """
    if np.ndim(features) < 3:
        raise ValueError(f"attention_map: features must be (N, *spatial, C) of rank >= 3, got {np.shape(features)}")
    _hyper("attention_map", "p", p)
    a = jnp.sum(jnp.abs(_f32(features)) ** p, axis=-1)
    return _l2_normalize(a.reshape(a.shape[0], -1))


def attention_transfer_loss(student_features, teacher_features, *, p=2) -> jax.Array:
    """Attention transfer: ``mean_{n, i} (a_s[n, i] - a_t[n, i])^2`` of the two :func:`attention_map`.

    As the authors' code, ``(at(x) - at(y)).pow(2).mean()``, which they multiply by ``beta = 1e3``.

    Args:
      student_features: ``(N, *spatial, C_s)`` array.
      teacher_features: ``(N, *spatial, C_t)`` array; the channel counts may differ.
      p: the power of :func:`attention_map`.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: rank below 3, different batch or spatial sizes, or concrete ``p <= 0`` or
        non-finite ``teacher_features``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)
      >>> float(distill.attention_transfer_loss(x, jnp.concatenate([x, x], axis=-1)))
      0.0

    References:
      Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017.
    """
    fn = "attention_transfer_loss"
    s, t = np.shape(student_features), np.shape(teacher_features)
    if min(len(s), len(t)) < 3 or s[:-1] != t[:-1]:
        raise ValueError(f"{fn}: student_features and teacher_features must be (N, *spatial, C), got {s} and {t}")
    _check_finite(f"{fn}: teacher_features", teacher_features)
    return jnp.mean((attention_map(student_features, p=p) - attention_map(teacher_features, p=p)) ** 2)


def attention_probs_loss(student_probs, teacher_probs) -> jax.Array:
    """KL(teacher || student) of transformer attention distributions per query row (MiniLM, TinyBERT).

    ``loss = mean_{n, h, i} sum_j t (log t - log s)`` with probabilities clipped to >= 1e-12 in the
    logs, so zeros give finite values. When the head counts differ both are first averaged over
    heads (each becomes ``(N, 1, T, T)``).

    Args:
      student_probs: ``(N, H_s, T, T)`` attention probabilities (rows sum to 1).
      teacher_probs: ``(N, H_t, T, T)`` attention probabilities.

    Returns:
      A float32 scalar, >= 0.

    Raises:
      ValueError: a rank other than 4, different ``N`` or ``T``, or concrete non-finite ``teacher_probs``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> t = jnp.array([[[[1.0, 0.0], [0.5, 0.5]]]])
      >>> float(distill.attention_probs_loss(t, t)), round(float(distill.attention_probs_loss(0 * t + 0.5, t)), 4)
      (0.0, 0.3466)

    References:
      Wang et al., "MiniLM", NeurIPS 2020; Jiao et al., "TinyBERT", Findings of EMNLP 2020.
    """
    fn = "attention_probs_loss"
    s, t = np.shape(student_probs), np.shape(teacher_probs)
    if len(s) != 4 or len(t) != 4 or (s[0], *s[2:]) != (t[0], *t[2:]):
        raise ValueError(f"{fn}: student_probs and teacher_probs must be (N, heads, T, T), got {s} and {t}")
    _check_finite(f"{fn}: teacher_probs", teacher_probs)
    student, teacher = _f32(student_probs), _f32(teacher_probs)
    if s[1] != t[1]:
        student, teacher = jnp.mean(student, axis=1, keepdims=True), jnp.mean(teacher, axis=1, keepdims=True)
    return _kl(teacher, _log(teacher), _log(student))


def _embeddings(fn: str, student, teacher, minimum: int) -> tuple[jax.Array, jax.Array]:
    """Both flattened to float32 ``(N, D)``, the teacher's as a constant."""
    s, t = np.shape(student), np.shape(teacher)
    if not s or not t or s[0] != t[0] or s[0] < minimum:
        raise ValueError(
            f"{fn}: student_embeddings and teacher_embeddings must be (N, ...) with one N >= {minimum}, got {s} and {t}"
        )
    _check_finite(f"{fn}: teacher_embeddings", teacher)
    return _f32(student).reshape(s[0], -1), jax.lax.stop_gradient(_f32(teacher).reshape(s[0], -1))


def _normalized_distances(e) -> jax.Array:
    """Pairwise distances (zero diagonal, from the Gram matrix) over their off-diagonal mean."""
    n, sq = e.shape[0], jnp.sum(e * e, axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(e, e.T, precision="highest")
    d = jnp.where(jnp.eye(n, dtype=bool), 0.0, jnp.sqrt(jnp.maximum(d2, _EPS)))
    return d / (jnp.sum(d) / (n * (n - 1)))


def rkd_distance_loss(student_embeddings, teacher_embeddings) -> jax.Array:
    """RKD distance loss: Huber (delta 1) between the pairwise distances, each over its mean distance.

    ``psi(i, j) = ||e_i - e_j|| / mean_{k != l} ||e_k - e_l||``, ``loss = mean_{i != j} huber(psi_s - psi_t)``,
    invariant to scaling, rotating and translating either side. Distances use ``sqrt(max(d^2, 1e-12))``
    and ``O(N^2)`` memory; the teacher term is a constant (``stop_gradient``).

    Args:
      student_embeddings: ``(N, ...)`` array, flattened to ``(N, D_s)``, ``N >= 2``.
      teacher_embeddings: ``(N, ...)`` array, flattened to ``(N, D_t)``; ``D_t`` may differ.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: different ``N``, ``N < 2``, or concrete non-finite ``teacher_embeddings``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> e = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
      >>> round(float(distill.rkd_distance_loss(e, 10.0 * e)), 6), round(float(distill.rkd_distance_loss(e, e**2)), 4)
      (0.0, 0.0156)

    References:
      Park et al., "Relational Knowledge Distillation", CVPR 2019.
    """
    s, t = _embeddings("rkd_distance_loss", student_embeddings, teacher_embeddings, 2)
    n = s.shape[0]
    return jnp.sum(optax.huber_loss(_normalized_distances(s), _normalized_distances(t), delta=1.0)) / (n * (n - 1))


def rkd_angle_loss(student_embeddings, teacher_embeddings) -> jax.Array:
    """RKD angle loss: Huber (delta 1) between the cosines of all triplet angles.

    ``psi(i, j, k) = <u(e_i - e_j), u(e_k - e_j)>``, the angle at ``e_j``, with ``u`` unit
    normalisation (norm floor 1e-12, so degenerate triplets give 0); ``loss = mean huber(psi_s - psi_t)``
    over all ``N^3`` triplets, as the authors' ``bmm``. Memory ``O(N^2 D + N^3)``; the teacher is a constant.

    Args:
      student_embeddings: ``(N, ...)`` array, flattened to ``(N, D_s)``, ``N >= 3``.
      teacher_embeddings: ``(N, ...)`` array, flattened to ``(N, D_t)``; ``D_t`` may differ.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: different ``N``, ``N < 3``, or concrete non-finite ``teacher_embeddings``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> e = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
      >>> round(float(distill.rkd_angle_loss(e, 3.0 * e[:, ::-1])), 6), round(float(distill.rkd_angle_loss(e, e**2)), 4)
      (0.0, 0.0018)

    References:
      Park et al., "Relational Knowledge Distillation", CVPR 2019.
    """
    s, t = _embeddings("rkd_angle_loss", student_embeddings, teacher_embeddings, 3)

    def cosines(e):
        u = _l2_normalize(e[None, :, :] - e[:, None, :])  # u[j, i] = unit(e_i - e_j)
        return jnp.einsum("jid,jkd->jik", u, u, precision="highest")

    return jnp.mean(optax.huber_loss(cosines(s), cosines(t), delta=1.0))


def _ensemble(fn: str, teacher_logits, t, weights) -> jax.Array:
    """The weighted mean of the teachers' ``softmax(logits / T)``, float32 ``(..., C)``."""
    if isinstance(teacher_logits, list | tuple):
        shapes = [np.shape(x) for x in teacher_logits]
        if not shapes or len(set(shapes)) != 1 or not shapes[0]:
            raise ValueError(f"{fn}: teacher_logits must be K >= 1 arrays of one shape (..., C), got {shapes}")
        stacked = jnp.stack([_f32(x) for x in teacher_logits])
    elif np.ndim(teacher_logits) < 2:
        raise ValueError(f"{fn}: stacked teacher_logits must be (K, ..., C), got shape {np.shape(teacher_logits)}")
    else:
        stacked = _f32(teacher_logits)
    _check_finite(f"{fn}: teacher_logits", stacked)
    k = stacked.shape[0]
    if weights is not None and np.shape(weights) != (k,):
        raise ValueError(f"{fn}: weights must have length K = {k} (one per teacher), got shape {np.shape(weights)}")
    if weights is not None and not isinstance(weights, jax.core.Tracer):
        v = np.asarray(weights, np.float64)
        if not (np.all(np.isfinite(v)) and np.all(v >= 0) and v.sum() > 0):
            raise ValueError(f"{fn}: weights must be finite, >= 0 and have a positive sum, got {v.tolist()}")
    w = jnp.ones((k,), jnp.float32) if weights is None else _f32(weights)
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
    t = _hyper("ensemble_targets", "temperature", temperature)
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
    fn = "multi_teacher_loss"
    t = _hyper(fn, "temperature", temperature)
    target = _ensemble(fn, teacher_logits, t, weights)
    _same_logits(fn, "student_logits", student_logits, "each of teacher_logits", target)
    return t**2 * _kl(target, _log(target), jax.nn.log_softmax(_f32(student_logits) / t, axis=-1))


def self_distillation_loss(
    exit_logits: Sequence[Any], final_logits, labels, *, temperature=3.0, alpha=0.5
) -> jax.Array:
    """Be Your Own Teacher: the deepest classifier of a network teaches its shallow exits.

    ``loss = CE(final) + mean_i [(1 - alpha) CE(exit_i) + alpha T^2 KL(softmax(sg(final) / T) || softmax(exit_i / T))]``
    with ``sg = jax.lax.stop_gradient``: ``final_logits`` get gradient from their own cross-entropy
    only. The paper's optional feature hints are :func:`feature_loss`.

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
    fn = "self_distillation_loss"
    if not isinstance(exit_logits, list | tuple) or not exit_logits:
        got = exit_logits if isinstance(exit_logits, list | tuple) else type(exit_logits).__name__
        raise ValueError(f"{fn}: exit_logits must be a non-empty list of (N, C) arrays, got {got}")
    for i, x in enumerate(exit_logits):
        _same_logits(fn, f"exit_logits[{i}]", x, "final_logits", final_logits)
    labels = _check_labels(fn, labels, final_logits)
    t, a = _hyper(fn, "temperature", temperature), _hyper(fn, "alpha", alpha, unit=True)
    _check_finite(f"{fn}: final_logits", final_logits)
    target = jax.lax.stop_gradient(final_logits)
    terms = [(1.0 - a) * _cross_entropy(x, labels) + a * _soft_kl(x, target, t) for x in exit_logits]
    return _cross_entropy(final_logits, labels) + sum(terms) / len(terms)


def ema_update(teacher_params: Any, student_params: Any, *, decay=0.999) -> Any:
    """A mean-teacher step: ``decay * teacher + (1 - decay) * student``, leaf by leaf.

    Computed in float32 (or wider) and cast back to each teacher leaf's dtype; non-floating teacher leaves are
    kept. A bfloat16 teacher rounds away updates below its resolution: keep EMA copies in float32.

    Args:
      teacher_params: a pytree of arrays.
      student_params: a pytree of the same structure and leaf shapes.
      decay: in [0, 1], a scalar; 1 keeps the teacher, 0 copies the student.

    Returns:
      The updated teacher pytree.

    Raises:
      ValueError: different tree structures or leaf shapes, or concrete ``decay`` outside [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import distill
      >>> distill.ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, decay=0.75)["w"].tolist()
      [0.25, 0.25]

    References:
      Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017.
    """
    fn = "ema_update"
    ts, ss = jax.tree.structure(teacher_params), jax.tree.structure(student_params)
    if ts != ss:
        raise ValueError(f"{fn}: teacher_params and student_params must have one tree structure, got {ts} and {ss}")
    d = _hyper(fn, "decay", decay, unit=True)

    def leaf(path, t, s):
        t = jnp.asarray(t)
        if t.shape != np.shape(s):
            raise ValueError(f"{fn}: leaf {jax.tree_util.keystr(path)} has shapes {t.shape} and {np.shape(s)}")
        if not jnp.issubdtype(t.dtype, jnp.floating):
            return t
        ct = t.dtype if t.dtype.itemsize > 4 else jnp.float32  # float64 leaves are not narrowed
        return (d.astype(ct) * t.astype(ct) + (1.0 - d).astype(ct) * jnp.asarray(s).astype(ct)).astype(t.dtype)

    return jax.tree_util.tree_map_with_path(leaf, teacher_params, student_params)
