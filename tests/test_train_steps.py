"""Tests for hamjax.train_steps: the train state, one jitted step, evaluation, gradients on one batch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from reference_models import plain_mlp

import hamjax
from hamjax import train, train_steps
from hamjax.train_steps import TrainState, evaluate, make_eval_step, make_train_step


def test_train_reexports_the_steps():
    for name in ("TrainState", "Objective", "supervised", "make_train_step", "make_eval_step", "evaluate"):
        assert getattr(train, name) is getattr(train_steps, name), name
    assert train.batch_grads is train_steps.batch_grads and train.cross_entropy is train_steps.cross_entropy


def test_train_step_counts_steps_and_lowers_the_loss(digits):
    apply_fn, params = plain_mlp()
    opt = optax.adam(3e-3)
    step = make_train_step(apply_fn, opt)
    state = TrainState(jax.tree.map(jnp.array, params), opt.init(params), jnp.asarray(0, jnp.int32))
    x, y = hamjax.data.batch_at(digits.train, 64, 0, seed=0)
    losses = []
    for _ in range(20):
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
    assert int(state.count) == 20 and state.count.dtype == jnp.int32
    assert losses[-1] < losses[0] * 0.7 and float(metrics["loss_scale"]) == 1.0


def test_eval_step_counts_only_the_valid_rows_and_evaluate_pads():
    eval_step = make_eval_step(lambda p, x: x @ p)
    x, y = jnp.eye(4), jnp.array([0, 1, 0, 0])
    loss_sum, correct = eval_step(jnp.eye(4), x, y, 2)
    assert int(correct) == 2
    np.testing.assert_allclose(loss_sum, 2 * optax.softmax_cross_entropy_with_integer_labels(x[:1], y[:1])[0])
    split = hamjax.data.Split(np.eye(5, dtype=np.float32), np.array([0, 1, 2, 0, 0]))
    result = evaluate(lambda p, x: x @ p, np.eye(5, dtype=np.float32), split, batch_size=2)
    assert result["accuracy"] == 3 / 5


def test_batch_grads_are_the_gradient_on_the_batch_fit_would_use(digits):
    apply_fn, params = plain_mlp()
    grads = hamjax.train.batch_grads(apply_fn, params, digits.train, 32, seed=3, step=5)
    x, y = hamjax.data.batch_at(digits.train, 32, 5, seed=3)
    expected = jax.grad(lambda p: hamjax.distill.cross_entropy(apply_fn(p, x), y))(params)
    chex.assert_trees_all_close(grads, expected, rtol=1e-6)
    nnx_fn, variables = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 16, 10)))
    g = hamjax.train.batch_grads(nnx_fn, variables, digits.train, 10**6)  # capped at the split's size
    assert set(g) == {"layers"} and g["layers"][0]["kernel"].shape == (64, 16)
