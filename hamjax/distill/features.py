"""Distillation on what two models compute inside: FitNets hints, attention maps and probabilities.

The student's intermediate features are compared with the teacher's, through a learned linear
projection when their widths differ (FitNets), as spatial attention maps, which do not depend
on the channel count (attention transfer), or as a transformer's attention probabilities
(MiniLM, TinyBERT). The named intermediates come from :func:`hamjax.jaxpr.capture`. Every loss
returns a float32 scalar and checks a concrete teacher for NaN and inf, as the losses of
:mod:`hamjax.distill.losses` do.

References:
  Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
  Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017.
  Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
  Transformers", NeurIPS 2020; Jiao et al., "TinyBERT: Distilling BERT for Natural Language
  Understanding", Findings of EMNLP 2020.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_finite, check_int
from hamjax.distill._numerics import f32, floored_log, l2_normalize, mean_kl, scalar_hyperparameter

__all__ = [
    "attention_map",
    "attention_probs_loss",
    "attention_transfer_loss",
    "feature_loss",
    "init_projection",
    "project",
]


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
    y = jnp.tensordot(f32(features), f32(projection["kernel"]), axes=1)
    return y + f32(projection["bias"])[(None,) * (y.ndim - 1)]


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
    where = "feature_loss"
    s, t = np.shape(student_features), np.shape(teacher_features)
    if not s or not t or s[:-1] != t[:-1]:
        raise ValueError(
            f"{where}: student_features and teacher_features must share leading dimensions, got {s} and {t}"
        )
    if projection is None and s[-1] != t[-1]:
        raise ValueError(
            f"{where}: student_features {s} and teacher_features {t} differ in width; "
            f"pass projection=init_projection(key, {s[-1]}, {t[-1]})"
        )
    if projection is not None and np.shape(projection["kernel"]) != (s[-1], t[-1]):
        k = np.shape(projection["kernel"])
        raise ValueError(f"{where}: projection kernel must be (student_dim, teacher_dim) = {(s[-1], t[-1])}, got {k}")
    check_finite(where, "teacher_features", teacher_features)
    student = f32(student_features) if projection is None else project(projection, student_features)
    teacher = f32(teacher_features)
    if normalize:
        student, teacher = l2_normalize(student), l2_normalize(teacher)
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
    scalar_hyperparameter("attention_map", "p", p)
    a = jnp.sum(jnp.abs(f32(features)) ** p, axis=-1)
    return l2_normalize(a.reshape(a.shape[0], -1))


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
    where = "attention_transfer_loss"
    s, t = np.shape(student_features), np.shape(teacher_features)
    if min(len(s), len(t)) < 3 or s[:-1] != t[:-1]:
        raise ValueError(f"{where}: student_features and teacher_features must be (N, *spatial, C), got {s} and {t}")
    check_finite(where, "teacher_features", teacher_features)
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
    where = "attention_probs_loss"
    s, t = np.shape(student_probs), np.shape(teacher_probs)
    if len(s) != 4 or len(t) != 4 or (s[0], *s[2:]) != (t[0], *t[2:]):
        raise ValueError(f"{where}: student_probs and teacher_probs must be (N, heads, T, T), got {s} and {t}")
    check_finite(where, "teacher_probs", teacher_probs)
    student, teacher = f32(student_probs), f32(teacher_probs)
    if s[1] != t[1]:
        student, teacher = jnp.mean(student, axis=1, keepdims=True), jnp.mean(teacher, axis=1, keepdims=True)
    return mean_kl(teacher, floored_log(teacher), floored_log(student))
