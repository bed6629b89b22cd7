"""fp16 loss scaling: the dynamic and static optax adapters, ``loss_scale_of`` and ``prepare_training``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hamjax.precision import (
    DynamicLossScaleState,
    dynamic_loss_scale,
    loss_scale_of,
    prepare_training,
    static_loss_scale,
    with_policy,
)

F16 = "p=f32,c=f16,o=f32"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_scale": 0.0}, "dynamic_loss_scale: initial_scale must be a finite number > 0, got 0.0"),
        ({"initial_scale": float("inf")}, "initial_scale must be a finite number > 0, got inf"),
        ({"initial_scale": "big"}, "initial_scale must be a finite number > 0, got 'big'"),
        ({"growth_interval": 0}, "growth_interval must be an integer >= 1, got 0"),
        ({"growth_interval": 2.5}, "growth_interval must be an integer >= 1, got 2.5"),
        ({"growth_interval": True}, "growth_interval must be an integer >= 1, got True"),
        ({"growth_factor": 1.0}, "growth_factor must be a finite number > 1, got 1.0"),
        ({"backoff_factor": 0.0}, "backoff_factor must be a finite number > 0 and < 1, got 0.0"),
        ({"backoff_factor": 1.0}, "backoff_factor must be a finite number > 0 and < 1, got 1.0"),
        ({"min_scale": -1.0}, "min_scale must be a finite number > 0, got -1.0"),
        ({"initial_scale": 2.0, "min_scale": 4.0}, "min_scale=4.0 must be <= initial_scale=2.0"),
    ],
)
def test_dynamic_loss_scale_validates_its_arguments_eagerly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dynamic_loss_scale(optax.sgd(0.1), **kwargs)


def test_static_loss_scale_validates_its_scale():
    with pytest.raises(ValueError, match="static_loss_scale: scale must be a finite number > 0, got 0"):
        static_loss_scale(optax.sgd(0.1), 0)


def _params():
    k1, k2 = jax.random.split(jax.random.key(3))
    return {"w": jax.random.normal(k1, (5, 4)), "b": jax.random.normal(k2, (4,))}


def _grads(t):
    return jax.tree.map(lambda p: jnp.cos(p * (t + 1)), _params())


def test_finite_steps_apply_the_inner_update_exactly():
    inner = optax.adam(1e-2)
    opt = dynamic_loss_scale(inner, initial_scale=2.0**10, growth_interval=100)
    params = _params()
    state, ref_state = opt.init(params), inner.init(params)
    assert isinstance(state, DynamicLossScaleState) and state.loss_scale.dtype == jnp.float32
    for t in range(3):
        g = _grads(t)
        scaled = jax.tree.map(lambda a, s=state: a * s.loss_scale, g)
        updates, state = opt.update(scaled, state, params)
        with jax.numpy_dtype_promotion("standard"):  # optax's adam promotes implicitly (decay ** int32 count)
            ref_updates, ref_state = inner.update(g, ref_state, params)
        chex.assert_trees_all_equal(updates, ref_updates)
        chex.assert_trees_all_equal(state.inner_state, ref_state)
    assert (float(state.loss_scale), int(state.finite_count), int(state.skipped_count)) == (1024.0, 3, 0)


def test_a_non_finite_step_is_skipped_and_halves_the_scale():
    opt = dynamic_loss_scale(optax.adam(1e-2), initial_scale=64.0)
    params = _params()
    state = opt.init(params)
    _, state = opt.update(_grads(0), state, params)
    for bad in (jnp.inf, -jnp.inf, jnp.nan):
        g = _grads(1)
        g["w"] = g["w"].at[2, 1].set(bad)
        updates, new = opt.update(g, state, params)
        assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
        assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
        chex.assert_trees_all_equal(new.inner_state, state.inner_state)
        assert float(new.loss_scale) == float(state.loss_scale) / 2
        assert (int(new.finite_count), int(new.skipped_count)) == (0, int(state.skipped_count) + 1)
        state = new
    assert float(state.loss_scale) == 8.0 and int(state.skipped_count) == 3


def test_scale_grows_after_growth_interval_finite_steps_and_respects_min_scale():
    opt = dynamic_loss_scale(optax.sgd(0.1), initial_scale=4.0, growth_interval=3, growth_factor=4.0, min_scale=2.0)
    params = _params()
    state = opt.init(params)
    scales = []
    for t in range(7):
        _, state = opt.update(_grads(t), state, params)
        scales.append((float(state.loss_scale), int(state.finite_count)))
    assert scales == [(4.0, 1), (4.0, 2), (16.0, 0), (16.0, 1), (16.0, 2), (64.0, 0), (64.0, 1)]
    inf = jax.tree.map(lambda g: g.at[0].set(jnp.inf), _grads(0))
    for expected in (32.0, 16.0, 8.0, 4.0, 2.0, 2.0):
        _, state = opt.update(inf, state, params)
        assert float(state.loss_scale) == expected
    huge = dynamic_loss_scale(optax.sgd(0.1), initial_scale=3e38, growth_interval=1)
    _, hs = huge.update(_grads(0), huge.init(params), params)
    assert float(hs.loss_scale) == pytest.approx(3e38)  # growth that would overflow to inf keeps the scale


def test_gradients_keep_their_dtype_and_static_scale_never_changes():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    opt = static_loss_scale(optax.sgd(1.0), 256.0)
    state = opt.init(params)
    g = jax.tree.map(lambda p: (p * 256).astype(jnp.bfloat16), params)
    updates, state = opt.update(g, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    jax.tree.map(lambda u, p: np.testing.assert_array_equal(u, -p), updates, params)
    bad = jax.tree.map(lambda a: a.at[0].set(jnp.nan), g)
    for _ in range(3):
        updates, state = opt.update(bad, state, params)
    assert float(state.loss_scale) == 256.0 and int(state.skipped_count) == 3 and int(state.finite_count) == 0


def test_loss_scaling_recovers_gradients_that_underflow_in_float16():
    f = with_policy(lambda p, x: p["w"] * 1e-4 * x, F16)
    params, x = {"w": jnp.ones(3)}, jnp.full(3, 1e-4)  # dy/dw = 1e-8: below float16's smallest subnormal

    def grads(scale):
        return jax.grad(lambda p: jnp.sum(f(p, x)).astype(jnp.float32) * scale)(params)

    assert float(jnp.abs(grads(1.0)["w"]).max()) == 0.0
    opt = dynamic_loss_scale(optax.sgd(1.0))
    state = opt.init(params)
    updates, _ = opt.update(grads(loss_scale_of(state)), state, params)
    np.testing.assert_allclose(updates["w"], -1e-8, rtol=0.01)


def _quadratic_step(opt):
    def step(carry, bad):
        params, state = carry
        loss = lambda p: loss_scale_of(state) * jnp.sum((p["w"] - 3.0) ** 2)  # noqa: E731
        g = jax.grad(loss)(params)
        g = jax.tree.map(lambda a: jnp.where(bad, jnp.inf, a), g)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), state.loss_scale

    return step


def test_under_jit_and_lax_scan_with_an_overflow_injected():
    opt = dynamic_loss_scale(optax.adam(0.1), initial_scale=2.0**12, growth_interval=2)
    params = {"w": jnp.zeros(4)}
    step = _quadratic_step(opt)
    bad = jnp.array([False, False, True, False, False, False])
    (p_scan, s_scan), scales = jax.jit(lambda c: jax.lax.scan(step, c, bad))((params, opt.init(params)))
    carry = (params, opt.init(params))
    for b in bad:
        carry, _ = step(carry, b)
    chex.assert_trees_all_close((p_scan, s_scan), carry, rtol=1e-6)
    assert scales.tolist() == [4096.0, 8192.0, 4096.0, 4096.0, 8192.0, 8192.0]
    assert int(s_scan.skipped_count) == 1
    # the skipped step changed nothing: five adam steps on the plain quadratic give the same params
    inner, p, s = optax.adam(0.1), params, optax.adam(0.1).init(params)
    for _ in range(5):
        with jax.numpy_dtype_promotion("standard"):  # optax's adam promotes implicitly (decay ** int32 count)
            u, s = inner.update(jax.grad(lambda q: jnp.sum((q["w"] - 3.0) ** 2))(p), s, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p_scan["w"], p["w"], rtol=1e-6)


def test_loss_scale_of_finds_the_scale_anywhere_in_a_state():
    params = _params()
    assert float(loss_scale_of(optax.adam(1e-3).init(params))) == 1.0
    assert loss_scale_of(optax.adam(1e-3).init(params)).dtype == jnp.float32
    chained = optax.chain(optax.clip_by_global_norm(1.0), dynamic_loss_scale(optax.adam(1e-3), initial_scale=8.0))
    assert float(loss_scale_of(chained.init(params))) == 8.0
    nested = dynamic_loss_scale(dynamic_loss_scale(optax.sgd(0.1)))
    with pytest.raises(ValueError, match="more than one loss_scale"):
        loss_scale_of(nested.init(params))


def test_prepare_training_wraps_the_optimizer_when_the_policy_needs_it():
    params = {"w": jnp.ones((3, 2)), "step": jnp.zeros((), jnp.int32)}
    apply_fn = lambda p, x: x @ p["w"]  # noqa: E731
    f, p, opt = prepare_training(apply_fn, params, optax.sgd(0.1), F16)
    assert f(p, jnp.ones((1, 3))).dtype == jnp.float32 and p["step"].dtype == jnp.int32
    assert isinstance(opt.init(p), DynamicLossScaleState)
    _, _, kept = prepare_training(apply_fn, params, opt, F16)
    assert kept is opt  # an optimizer that holds a loss scale is wrapped once, not twice
    _, p16, none = prepare_training(apply_fn, params, optax.sgd(0.1), "p=f16,c=f16,o=f32", loss_scale="none")
    assert p16["w"].dtype == jnp.float16 and float(loss_scale_of(none.init(p16))) == 1.0
    _, p32, plain = prepare_training(apply_fn, params, optax.sgd(0.1), "p=f32,c=bf16,o=f32")
    assert float(loss_scale_of(plain.init(p32))) == 1.0
    _, _, forced = prepare_training(apply_fn, params, optax.sgd(0.1), None, loss_scale="dynamic")
    assert float(loss_scale_of(forced.init(params))) == 2.0**15
    with pytest.raises(ValueError, match=r"prepare_training: loss_scale must be one of .*got 'always'"):
        prepare_training(apply_fn, params, optax.sgd(0.1), F16, loss_scale="always")
