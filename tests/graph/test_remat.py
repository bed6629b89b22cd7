"""hamjax.graph.remat: a function computed in checkpointed segments, the same values in less training memory."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import normal, plain_mlp, random_model

import hamjax
from hamjax._base import trainable, with_trainable
from hamjax.graph import REMAT_POLICIES, rematerialize
from hamjax.measure import compiled_memory


def _deep(params, x):
    for w1, w2 in params:
        x = x + jax.nn.gelu(x @ w1) @ w2
    return jnp.sum(x * x)


@pytest.fixture(scope="module")
def deep():
    rng = np.random.default_rng(0)
    params = [(normal(rng, (32, 128)) * 0.1, normal(rng, (128, 32)) * 0.1) for _ in range(6)]
    return params, normal(rng, (512, 32))


def test_policies_are_the_installed_jax_ones():
    assert REMAT_POLICIES[:2] == ("none", "full") and "dots" in REMAT_POLICIES
    assert all(hasattr(jax.checkpoint_policies, p) for p in ("nothing_saveable", "dots_saveable"))


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_gradients_equal_the_plain_ones_and_memory_drops(policy, deep):
    params, x = deep
    grad, remat_grad = jax.jit(jax.grad(_deep)), jax.jit(jax.grad(rematerialize(_deep, policy)))
    chex.assert_trees_all_close(remat_grad(params, x), grad(params, x), rtol=1e-5, atol=1e-6)
    assert float(rematerialize(_deep, policy)(params, x)) == pytest.approx(float(_deep(params, x)), rel=1e-6)
    plain, remat = compiled_memory(grad, params, x), compiled_memory(remat_grad, params, x)
    if plain is not None and policy == "full":
        assert remat.temp_bytes < 0.6 * plain.temp_bytes, (remat, plain)


def test_none_is_the_function_itself_and_trivial_functions_pass_through():
    assert rematerialize(_deep, "none") is _deep
    x = jnp.arange(3.0)
    assert rematerialize(lambda a: a, "full")(x) is x  # no operation at all
    grad = jax.grad(rematerialize(lambda a: jnp.sum(a * 2.0) + 0.0 * jnp.sum(jnp.sin(a)), "full", segments=3))(x)
    np.testing.assert_allclose(grad, 2.0 * np.ones(3))


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(32)(x)))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(10)(x)


def _models():
    model = _LinenNet()
    linen = hamjax.linen_functional(model, model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1))))
    vit_fn, _, vit_params = random_model("vit", input_shape=(8, 8, 1), patch_size=4, hidden_size=16, num_heads=2)
    return {"plain": plain_mlp(), "linen": linen, "nnx vit": (vit_fn, vit_params)}


@pytest.mark.parametrize("kind", ["plain", "linen", pytest.param("nnx vit", marks=pytest.mark.slow)])
def test_any_model_in_train_mode_with_dropout_and_batch_stats(kind, digits):
    apply_fn, params = _models()[kind]
    x, y = jnp.asarray(digits.train.x[:16]), jnp.asarray(digits.train.y[:16])

    def loss(train_params, x, key):
        variables = with_trainable(apply_fn, params, train_params)
        logits, new = hamjax.call_model(apply_fn, variables, x, train=True, rng=key)
        return hamjax.distill.cross_entropy(logits, y), (new, jnp.argmax(logits, -1))

    train_params = trainable(apply_fn, params)
    key = jax.random.key(1)
    want = jax.jit(jax.value_and_grad(loss, has_aux=True))(train_params, x, key)
    got = jax.jit(jax.value_and_grad(rematerialize(loss, "full", segments=3), has_aux=True))(train_params, x, key)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)  # integer argmax and batch statistics too


def test_bad_policy_and_segments_are_refused_before_tracing():
    def never(*_):
        raise AssertionError("traced")

    with pytest.raises(ValueError, match=r"rematerialize: policy must be one of .*'full'.*got 'everything'"):
        rematerialize(never, "everything")
    with pytest.raises(ValueError, match="rematerialize: segments"):
        rematerialize(never, "full", segments=0)
