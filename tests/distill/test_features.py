"""FitNets hints, attention maps, attention transfer and attention probabilities against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import distill

RNG = np.random.default_rng(0)


def _lsm(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# --- features ---------------------------------------------------------------------------------------


def test_init_projection_shapes_scale_and_errors():
    proj = distill.init_projection(jax.random.key(0), 256, 64, dtype=jnp.bfloat16)
    assert proj["kernel"].shape == (256, 64) and proj["bias"].shape == (64,)
    assert proj["kernel"].dtype == jnp.bfloat16 and not np.any(np.asarray(proj["bias"], np.float32))
    assert float(jnp.std(proj["kernel"].astype(jnp.float32))) == pytest.approx(1 / 16, rel=0.05)
    with pytest.raises(ValueError, match="student_dim must be an integer >= 1"):
        distill.init_projection(jax.random.key(0), 0, 4)


def test_feature_loss_with_projection_equals_manual():
    s, t = RNG.normal(size=(3, 4, 6)).astype(np.float32), RNG.normal(size=(3, 4, 8)).astype(np.float32)
    proj = distill.init_projection(jax.random.key(1), 6, 8)
    proj["bias"] = jnp.arange(8.0) / 8
    k, b = np.asarray(proj["kernel"], np.float64), np.asarray(proj["bias"], np.float64)
    # project() keeps the default matmul precision (TF32 on recent GPUs), hence the tolerance.
    _close(distill.feature_loss(s, t, projection=proj), np.mean((s @ k + b - t) ** 2), rtol=2e-3)
    _close(distill.project(proj, s), s @ k + b, rtol=2e-3, atol=2e-3)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    _close(
        distill.feature_loss(s, t, projection=proj, normalize=True),
        np.mean((unit(s @ k + b) - unit(t)) ** 2),
        rtol=2e-3,
    )
    _close(distill.feature_loss(t, 2 * t), np.mean(t**2))


def test_feature_loss_shape_errors():
    s, t = jnp.ones((4, 6)), jnp.ones((4, 8))
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(4, 8\).*projection=init_projection\(key, 6, 8\)"):
        distill.feature_loss(s, t)
    with pytest.raises(ValueError, match=r"kernel must be .* \(6, 8\), got \(8, 6\)"):
        distill.feature_loss(s, t, projection=distill.init_projection(jax.random.key(0), 8, 6))
    with pytest.raises(ValueError, match="leading dimensions"):
        distill.feature_loss(jnp.ones((3, 6)), t, projection=distill.init_projection(jax.random.key(0), 6, 8))
    with pytest.raises(ValueError, match=r"project: expected kernel"):
        distill.project(distill.init_projection(jax.random.key(0), 6, 8), t)


# --- attention transfer -----------------------------------------------------------------------------


def test_attention_map_matches_numpy_and_has_unit_rows():
    x = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
    for p in (1, 2, 3.0):
        a = (np.abs(x.astype(np.float64)) ** p).sum(-1).reshape(2, -1)
        m = distill.attention_map(x, p=p)
        assert m.shape == (2, 9) and m.dtype == jnp.float32
        _close(m, a / np.linalg.norm(a, axis=-1, keepdims=True))
        _close(jnp.linalg.norm(m, axis=-1), [1.0, 1.0])
    assert distill.attention_map(jnp.ones((2, 7, 16))).shape == (2, 7)  # tokens (N, T, D)
    assert not np.any(np.isnan(distill.attention_map(jnp.zeros((1, 2, 2, 3)))))
    with pytest.raises(ValueError, match=r"rank >= 3, got \(2, 4\)"):
        distill.attention_map(jnp.ones((2, 4)))


def test_attention_transfer_loss_values():
    x, y = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32), RNG.normal(size=(2, 4, 4, 5)).astype(np.float32)
    assert float(distill.attention_transfer_loss(x, x)) == pytest.approx(0.0, abs=1e-12)
    # Duplicated channels double the channel sum; the per-example normalisation removes it.
    assert float(distill.attention_transfer_loss(x, np.concatenate([x, x], -1))) == pytest.approx(0.0, abs=1e-10)
    a, b = (np.asarray(distill.attention_map(v), np.float64) for v in (x, y))
    _close(distill.attention_transfer_loss(x, y), np.mean((a - b) ** 2))
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\) and \(2, 2, 4, 5\)"):
        distill.attention_transfer_loss(x, y[:, :2])


def _probs(shape, seed):
    return np.exp(_lsm(2 * np.random.default_rng(seed).normal(size=shape))).astype(np.float32)


def _np_probs_kl(s, t):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    return np.mean(np.sum(t * (np.log(np.maximum(t, 1e-12)) - np.log(np.maximum(s, 1e-12))), -1))


def test_attention_probs_loss_values_and_head_averaging():
    s, t = _probs((2, 4, 5, 5), 0), _probs((2, 4, 5, 5), 1)
    assert float(distill.attention_probs_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill.attention_probs_loss(s, t)) > 0.01
    _close(distill.attention_probs_loss(s, t), _np_probs_kl(s, t))
    s2 = _probs((2, 2, 5, 5), 2)
    _close(distill.attention_probs_loss(s2, t), _np_probs_kl(s2.mean(1, keepdims=True), t.mean(1, keepdims=True)))
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 5\) and \(2, 4, 4, 4\)"):
        distill.attention_probs_loss(s, t[:, :, :4, :4])


def test_attention_probs_loss_is_finite_with_zero_probabilities():
    t = np.array([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]], np.float32)
    s = np.array([[[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]], np.float32)
    loss, grad = jax.jit(jax.value_and_grad(distill.attention_probs_loss))(s, t)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    _close(loss, _np_probs_kl(s, t))
