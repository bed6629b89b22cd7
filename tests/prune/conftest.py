"""Models of the three kinds (NNX, Linen, plain jnp) that the pruning tests train."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import hamjax

MODEL_KINDS = ("nnx", "linen", "plain")


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(64)(x)))
        return nn.Dense(10)(x)


def _plain():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (64, 64)) / 8.0,
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 10)) / 8,
    }

    def apply_fn(p, x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None]) @ p["w2"]

    return apply_fn, params


def _kind(kind):
    if kind == "nnx":
        return hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))
    if kind == "linen":
        model = _LinenMLP()
        return hamjax.linen_functional(model, model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1))))
    return _plain()


@pytest.fixture(params=MODEL_KINDS)
def any_model(request):
    """``(apply_fn, params)`` of a small digits MLP, once per model kind."""
    return _kind(request.param)


@pytest.fixture
def nnx_model():
    """``(apply_fn, params)`` of the reference NNX MLP 64-64-10."""
    return _kind("nnx")


@pytest.fixture
def plain_model():
    """``(apply_fn, params)`` of a plain jnp MLP 64-64-10."""
    return _plain()
