"""Relational knowledge distillation: the student matches how the teacher places examples relative to each other.

Instead of matching outputs one example at a time, RKD compares the structure of a batch of
embeddings: normalised pairwise distances (:func:`rkd_distance_loss`) and the angles of all
triplets (:func:`rkd_angle_loss`). Both are invariant to scaling, rotating and translating either
side, so the two embeddings may have different widths and no projection is learned. The teacher
term is a constant (``stop_gradient``); a concrete teacher is checked for NaN and inf.

References:
  Park et al., "Relational Knowledge Distillation", CVPR 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax._checks import check_finite
from hamjax.distill._numerics import EPS, f32, l2_normalize

__all__ = ["rkd_angle_loss", "rkd_distance_loss"]


def _embeddings(where: str, student, teacher, minimum: int) -> tuple[jax.Array, jax.Array]:
    """Both flattened to float32 ``(N, D)``, the teacher's as a constant."""
    s, t = np.shape(student), np.shape(teacher)
    if not s or not t or s[0] != t[0] or s[0] < minimum:
        raise ValueError(
            f"{where}: student_embeddings and teacher_embeddings must be (N, ...) with one N >= {minimum}, "
            f"got {s} and {t}"
        )
    check_finite(where, "teacher_embeddings", teacher)
    return f32(student).reshape(s[0], -1), jax.lax.stop_gradient(f32(teacher).reshape(s[0], -1))


def _normalized_distances(e) -> jax.Array:
    """Pairwise distances (zero diagonal, from the Gram matrix) over their off-diagonal mean."""
    n, sq = e.shape[0], jnp.sum(e * e, axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(e, e.T, precision="highest")
    d = jnp.where(jnp.eye(n, dtype=bool), 0.0, jnp.sqrt(jnp.maximum(d2, EPS)))
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
        u = l2_normalize(e[None, :, :] - e[:, None, :])  # u[j, i] = unit(e_i - e_j)
        return jnp.einsum("jid,jkd->jik", u, u, precision="highest")

    return jnp.mean(optax.huber_loss(cosines(s), cosines(t), delta=1.0))
