import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import plain_mlp

from hamjax import regularize


def params():
    return {"w": jnp.full((32, 32), 2.0), "b": jnp.ones(32), "conv": jnp.full((3, 3, 4, 8), -1.0)}


def test_masks_and_scale():
    out = regularize.drop_connect(jax.random.key(0), params(), 0.25)
    values = set(np.unique(np.asarray(out["w"])).tolist())
    assert values == {0.0, float(np.float32(2.0) / np.float32(0.75))}
    assert abs(float((out["w"] == 0).mean()) - 0.25) < 0.05
    np.testing.assert_array_equal(out["b"], 1.0)
    # each selected leaf draws its own mask
    assert not np.array_equal(np.asarray(out["w"][:3, :3, None, None] == 0), np.asarray(out["conv"][..., :1, :1] == 0))


def test_keeps_the_expectation():
    keys = jax.random.split(jax.random.key(1), 400)
    many = jax.vmap(lambda k: regularize.drop_connect(k, params(), 0.5))(keys)
    np.testing.assert_allclose(many["w"].mean(axis=0).mean(), 2.0, rtol=0.01)
    np.testing.assert_allclose(many["conv"].mean(axis=0), -1.0, atol=0.3)


def test_jit_and_vmap_over_rate_and_gradient():
    key = jax.random.key(2)
    rates = jnp.array([0.0, 0.3, 0.6])
    batched = jax.jit(jax.vmap(lambda r: regularize.drop_connect(key, params(), r)["w"]))(rates)
    for r, row in zip(rates.tolist(), batched, strict=True):
        np.testing.assert_allclose(row, regularize.drop_connect(key, params(), jnp.asarray(r))["w"], rtol=1e-6)
    assert float((batched[0] == 0).mean()) == 0.0
    grad = jax.grad(lambda p: regularize.drop_connect(key, p, 0.5)["w"].sum())(params())
    assert set(np.unique(np.asarray(grad["w"])).tolist()) == {0.0, 2.0}


def test_rate_zero_is_identity_and_dtypes_kept():
    p = params()
    assert regularize.drop_connect(jax.random.key(0), p, 0.0) is p
    half = {"w": jnp.ones((8, 8), jnp.bfloat16)}
    assert regularize.drop_connect(jax.random.key(0), half, 0.5)["w"].dtype == jnp.bfloat16


def test_plain_model_still_runs():
    apply_fn, p = plain_mlp()
    dropped = regularize.drop_connect(jax.random.key(3), p, 0.5)
    np.testing.assert_array_equal(dropped["b1"], p["b1"])
    assert apply_fn(dropped, jnp.ones((2, 64))).shape == (2, 10)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.5"])
def test_bad_rates(bad):
    with pytest.raises(ValueError, match=r"drop_connect: rate must be a scalar in \[0, 1\)"):
        regularize.drop_connect(jax.random.key(0), params(), bad)
