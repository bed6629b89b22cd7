"""The mean teacher: ema_update values, dtypes and errors, and the ema_teacher optax adapter."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hamjax import distill


def _close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# --- EMA teacher ------------------------------------------------------------------------------------


def test_ema_update_values_and_dtypes():
    teacher = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3, jnp.bfloat16), "step": jnp.array(7)}
    student = {"w": jnp.zeros((2, 3)), "b": jnp.ones(3, jnp.bfloat16), "step": jnp.array(9)}
    out = distill.ema_update(teacher, student, decay=0.75)
    _close(out["w"], np.full((2, 3), 0.75))
    assert out["b"].dtype == jnp.bfloat16 and out["w"].dtype == jnp.float32
    _close(out["b"].astype(jnp.float32), np.full(3, 0.25))
    assert int(out["step"]) == 7
    decays = jnp.array([0.0, 0.5, 1.0])
    batched = jax.jit(jax.vmap(lambda d: distill.ema_update(teacher, student, decay=d)["w"]))(decays)
    _close(batched[:, 0, 0], [0.0, 0.5, 1.0])


def test_ema_update_errors():
    with pytest.raises(ValueError, match="same|one tree structure"):
        distill.ema_update({"w": jnp.ones(2)}, {"v": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"\['w'\] has shapes \(2,\) and \(3,\)"):
        distill.ema_update({"w": jnp.ones(2)}, {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"decay must be a scalar in \[0, 1\], got 1.5"):
        distill.ema_update({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, decay=1.5)


# --- the optax adapter ------------------------------------------------------------------------------


def test_ema_teacher_runs_inner_and_averages_the_updated_params():
    opt = distill.ema_teacher(optax.adam(0.1), 0.75)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.zeros(3)}
    state = opt.init(params)
    assert isinstance(state, distill.EmaTeacherState)
    assert state.ema["w"] is not params["w"]  # a copy: a step that donates params donates each buffer once
    inner, inner_state, ema = optax.adam(0.1), optax.adam(0.1).init(params), params
    for t in range(3):
        grads = jax.tree.map(lambda p, t=t: jnp.cos(p + t), params)
        updates, state = opt.update(grads, state, params)
        with jax.numpy_dtype_promotion("standard"):  # optax's adam promotes implicitly (decay ** int32 count)
            expected, inner_state = inner.update(grads, inner_state, params)
        chex.assert_trees_all_equal(updates, expected)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, ema, params)
        chex.assert_trees_all_close(state.ema, ema, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_equal(state.inner_state, inner_state)
    np.testing.assert_array_equal(optax.tree_utils.tree_get(state, "ema")["w"], state.ema["w"])


def test_ema_teacher_state_is_stable_under_scan():
    opt = distill.ema_teacher(optax.sgd(0.5), 0.5)
    params = {"w": jnp.ones(4)}

    def body(carry, _):
        p, s = carry
        updates, s = opt.update(jax.tree.map(lambda w: 2 * w, p), s, p)
        return (optax.apply_updates(p, updates), s), None

    (p, s), _ = jax.lax.scan(body, (params, opt.init(params)), length=3)
    np.testing.assert_allclose(p["w"], 0.0)  # w - 0.5 * 2w
    _close(s.ema["w"], 0.5**3 * np.ones(4))


def test_ema_teacher_errors():
    with pytest.raises(ValueError, match=r"ema_teacher: decay must be a scalar in \[0, 1\], got 1.5"):
        distill.ema_teacher(optax.sgd(0.1), 1.5)
    opt = distill.ema_teacher(optax.sgd(0.1), 0.5)
    with pytest.raises(ValueError, match="ema_teacher: update needs params"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))
    with pytest.raises(ValueError, match=r"EmaTeacher: decay must be a finite number >= 0 and <= 1, got 2"):
        distill.EmaTeacher(decay=2)
