"""A tiny member model and batches shared by test_trainer.py and test_population.py."""

import jax
import jax.numpy as jnp
import numpy as np

import hamjax
from hamjax.search import population as pop


def mlp(p, x):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return h @ p["w2"]


def make(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": 0.5 * jax.random.normal(k1, (6, 16)),
        "b1": jnp.zeros((1, 16)),
        "w2": 0.5 * jax.random.normal(k2, (16, 3)),
    }


def batches(steps=4, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(steps, batch, 6)).astype(np.float32)
    ys = rng.integers(0, 3, size=(steps, batch)).astype(np.int32)
    return xs, ys


def alone(params, lr, xs, ys):
    """One member trained alone with plain optax adamw: the reference."""
    import optax

    opt = optax.adamw(lr, weight_decay=0.0)
    state = opt.init(params)
    losses = []
    for x, y in zip(xs, ys, strict=True):
        value, grads = jax.value_and_grad(lambda p, x=x, y=y: hamjax.distill.cross_entropy(mlp(p, x), y))(params)
        with jax.numpy_dtype_promotion("standard"):  # optax's adamw promotes implicitly (decay ** int32 count)
            updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(value)
    return params, np.asarray(losses)


def teacher_trainer():
    teacher = make(jax.random.key(99))
    return pop.Population(mlp, teacher=(mlp, teacher))
