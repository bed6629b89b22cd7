"""Checks every reference model passes, shared by the tests in this folder as fixtures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hamjax._base import functional


def _eval_view(model):
    return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


def _functional_matches_eager(model, x):
    """The jitted pure pair equals the eager module in eval mode, whatever rng is passed."""
    apply_fn, variables = functional(model)
    eager = _eval_view(model)(x)
    jitted = jax.jit(apply_fn)(variables, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    with_rng = jax.jit(apply_fn)(variables, x, rng=jax.random.key(3))
    np.testing.assert_array_equal(with_rng, jitted)
    return jitted


def _dropout_behaves(model, x):
    """Train-mode dropout depends on the key (and only on it); eval mode ignores it."""
    apply_fn, variables = functional(model)
    train = jax.jit(lambda v, k: apply_fn(v, x, train=True, rng=k))
    evaluate = jax.jit(lambda v, k: apply_fn(v, x, rng=k))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    assert not np.allclose(train(variables, k1), train(variables, k2))
    np.testing.assert_array_equal(train(variables, k1), train(variables, k1))
    np.testing.assert_array_equal(evaluate(variables, k1), evaluate(variables, k2))
    assert not np.allclose(train(variables, k1), evaluate(variables, k1))


def _sgd_losses(model, x, y, *, steps: int = 4, learning_rate: float = 0.05):
    """Losses of ``steps`` jitted SGD steps on a fixed batch, through ``jax.grad`` of cross-entropy."""
    apply_fn, variables = functional(model)

    def loss_fn(params, variables):
        logits, new = apply_fn({**variables, "params": params}, x, train=True, mutable=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    @jax.jit
    def step(variables):
        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"], variables)
        params = jax.tree.map(lambda p, g: p - learning_rate * g, variables["params"], grads)
        return {**new, "params": params}, loss

    losses = []
    for _ in range(steps + 1):
        variables, loss = step(variables)
        losses.append(float(loss))
    return losses


def _batch(shape, n: int = 16, num_classes: int = 10, seed: int = 0):
    x = jax.random.normal(jax.random.key(seed), (n, *shape), jnp.float32)
    return x, jnp.arange(n) % num_classes


def _param_count(model) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.fixture
def functional_matches_eager():
    return _functional_matches_eager


@pytest.fixture
def dropout_behaves():
    return _dropout_behaves


@pytest.fixture
def sgd_losses():
    return _sgd_losses


@pytest.fixture
def batch():
    return _batch


@pytest.fixture
def param_count():
    return _param_count
