import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hamjax
from hamjax._base import call_model, trainable, with_trainable


class _BNDrop(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.dense(x)))


def test_functional_gives_plain_dict_collections_and_leaves_module_alone():
    module = _BNDrop(nnx.Rngs(0))
    apply_fn, variables = hamjax.functional(module)
    assert set(variables) == {"params", "batch_stats"}
    assert variables["params"]["dense"]["kernel"].shape == (3, 4)
    x = jnp.arange(15.0).reshape(5, 3)
    _, new = jax.jit(lambda v, x, k: apply_fn(v, x, train=True, rng=k, mutable=True))(variables, x, jax.random.key(1))
    assert not np.allclose(new["batch_stats"]["bn"]["mean"], 0.0)
    np.testing.assert_array_equal(module.bn.mean[...], np.zeros(4))  # the module itself is untouched


def test_functional_eval_matches_the_module_in_eval_mode():
    module = _BNDrop(nnx.Rngs(0))
    apply_fn, variables = hamjax.functional(module)
    x = jnp.linspace(-1, 1, 12).reshape(4, 3)
    expected = nnx.view(module, deterministic=True, use_running_average=True)(x)
    np.testing.assert_allclose(jax.jit(apply_fn)(variables, x), expected, rtol=1e-6)


def test_functional_dropout_follows_the_rng_argument():
    apply_fn, variables = hamjax.functional(_BNDrop(nnx.Rngs(0)))
    x = jnp.ones((64, 3))
    f = jax.jit(lambda v, k: apply_fn(v, x, train=True, rng=k, mutable=True)[0])
    a, b, a2 = f(variables, jax.random.key(1)), f(variables, jax.random.key(2)), f(variables, jax.random.key(1))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(apply_fn(variables, x), apply_fn(variables, x))


def test_functional_rejects_non_modules_and_missing_collections():
    with pytest.raises(TypeError, match="nnx.Module"):
        hamjax.functional(lambda p, x: x)
    apply_fn, variables = hamjax.functional(_BNDrop(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="batch_stats"):
        apply_fn({"params": variables["params"]}, jnp.ones((2, 3)))


class _LinenBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(4)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dropout(0.5, deterministic=not train)(x)


def test_linen_functional_speaks_the_training_protocol():
    model = _LinenBN()
    variables = model.init(jax.random.key(0), jnp.ones((2, 3)))
    apply_fn, v = hamjax.linen_functional(model, variables)
    x = jnp.arange(12.0).reshape(4, 3)
    y, new = apply_fn(v, x, train=True, rng=jax.random.key(0), mutable=True)
    assert y.shape == (4, 4)
    assert not np.allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.0)
    np.testing.assert_allclose(apply_fn(v, x), model.apply(variables, x), rtol=1e-6)


def test_linen_functional_requires_params():
    with pytest.raises(ValueError, match="'params'"):
        hamjax.linen_functional(_LinenBN(), {"batch_stats": {}})


def test_trainable_and_call_model_for_plain_functions():
    def f(p, x):
        return x @ p["w"]

    p = {"w": jnp.eye(2)}
    assert trainable(f, p) is p
    assert with_trainable(f, p, {"w": jnp.zeros((2, 2))})["w"].sum() == 0
    y, same = call_model(f, p, jnp.ones((1, 2)), train=True, rng=jax.random.key(0))
    assert same is p
    np.testing.assert_array_equal(y, [[1.0, 1.0]])


def test_chain_applies_in_order_and_validates():
    def add(c):
        return hamjax.Transform(lambda p: (), lambda p, s, **e: (jax.tree.map(lambda a: a + c, p), s))

    def mul(c):
        return hamjax.Transform(lambda p: (), lambda p, s, **e: (jax.tree.map(lambda a: a * c, p), s))

    t = hamjax.chain(add(1.0), mul(3.0))
    out, state = t.apply({"w": jnp.zeros(2)}, t.init({"w": jnp.zeros(2)}), unused_extra=1)
    np.testing.assert_array_equal(out["w"], [3.0, 3.0])
    assert isinstance(state, hamjax.ChainState) and len(state.states) == 2
    with pytest.raises(TypeError, match="argument 1"):
        hamjax.chain(add(1.0), lambda p: p)
    with pytest.raises(ValueError, match="sub-states"):
        t.apply({"w": jnp.zeros(2)}, hamjax.ChainState(((),)))
