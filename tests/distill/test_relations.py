"""Relational KD (distance and angle losses) against float64 numpy references, invariances and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import distill

RNG = np.random.default_rng(0)


def _huber(x):
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def _np_rkd_distance(s, t):
    def psi(e):
        e = np.asarray(e, np.float64).reshape(len(e), -1)
        d = np.linalg.norm(e[:, None] - e[None], axis=-1)
        off = ~np.eye(len(e), dtype=bool)
        return d / d[off].mean(), off

    (ps, off), (pt, _) = psi(s), psi(t)
    return _huber(ps - pt)[off].mean()


def _np_rkd_angle(s, t):
    def psi(e):
        e = np.asarray(e, np.float64).reshape(len(e), -1)
        n = len(e)
        out = np.zeros((n, n, n))
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    a, b = e[i] - e[j], e[k] - e[j]
                    out[j, i, k] = a @ b / (max(np.linalg.norm(a), 1e-12) * max(np.linalg.norm(b), 1e-12))
        return out

    return _huber(psi(s) - psi(t)).mean()


def _close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# --- relational (RKD) -------------------------------------------------------------------------------

E_S = RNG.normal(size=(6, 5)).astype(np.float32)
E_T = RNG.normal(size=(6, 2, 4)).astype(np.float32)  # flattened to D = 8


@pytest.mark.parametrize(
    "loss, ref", [(distill.rkd_distance_loss, _np_rkd_distance), (distill.rkd_angle_loss, _np_rkd_angle)]
)
def test_rkd_matches_numpy_and_is_invariant(loss, ref):
    _close(loss(E_S, E_T), ref(E_S, E_T), rtol=1e-4)
    assert float(loss(E_S, E_T)) > 1e-3
    q = np.linalg.qr(RNG.normal(size=(5, 5)))[0].astype(np.float32)
    teachers = np.stack([3.0 * E_S, E_S @ q, 0.5 * E_S @ q + 2.0])  # scaled, rotated, all three and shifted
    _close(jax.jit(jax.vmap(loss, in_axes=(None, 0)))(E_S, teachers), np.zeros(3), atol=1e-6)
    grad = jax.jit(jax.grad(loss))(E_S, E_T)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0


def test_rkd_teacher_is_a_constant_and_batch_errors():
    g = jax.jit(jax.grad(distill.rkd_distance_loss, argnums=1))(E_S, E_T)
    assert not np.any(np.asarray(g))
    with pytest.raises(ValueError, match=r"N >= 2, got \(1, 5\)"):
        distill.rkd_distance_loss(E_S[:1], E_T[:1])
    with pytest.raises(ValueError, match=r"N >= 3, got \(2, 5\)"):
        distill.rkd_angle_loss(E_S[:2], E_T[:2])
    with pytest.raises(ValueError, match=r"\(6, 5\) and \(5, 2, 4\)"):
        distill.rkd_distance_loss(E_S, E_T[:5])
