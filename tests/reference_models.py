"""Reference models with random (not initialised) variables, plain jax.numpy models and inputs, shared by the tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hamjax
from hamjax.models import build, config_of


@functools.cache
def random_model(name, seed=0, **kw):
    """Apply function, config and random variables of a reference model.

    The module is built with ``nnx.eval_shape``: eager initializers compile per shape and would dominate the
    test time. Biases, norms and batch statistics are random too, so that a mask that misses one shows.
    """
    abstract = nnx.eval_shape(lambda: build(name, **kw))
    apply_fn, shapes = hamjax.functional(abstract)
    rng = np.random.default_rng(seed)

    def draw(path, a):
        leaf, noise = path[-1].key, rng.normal(size=a.shape)
        if leaf == "var":
            value = 0.5 + 0.5 * np.abs(noise)
        elif leaf == "scale":
            value = 1.0 + 0.1 * noise
        else:
            value = noise * (0.1 if len(a.shape) == 1 else 1 / np.sqrt(np.prod(a.shape[:-1])))
        return jnp.asarray(value, a.dtype)

    return apply_fn, config_of(abstract), jax.tree_util.tree_map_with_path(draw, shapes)


def plain_mlp(seed=0):
    """``(apply_fn, params)`` of a plain jax.numpy MLP 64-64-10 with biases (no flax)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (64, 64)) / 8.0,
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 10)) / 8.0,
        "b2": jnp.zeros(10),
    }

    def apply_fn(p, x):
        # explicit [None] broadcasts: the suite runs with jax_numpy_rank_promotion="raise"
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None])
        return h @ p["w2"] + p["b2"][None]

    return apply_fn, params


def normal(rng, shape):
    """Float32 values drawn by numpy: eager jax.random compiles once per shape, which costs more than the tests."""
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def plain_params_and_x():
    """Random params ``{"w": (5, 3), "v": (3, 5), "b": (5,)}`` and an input ``x`` ``(2, 3)`` for jnp functions."""
    rng = np.random.default_rng(0)
    params = {"w": normal(rng, (5, 3)), "v": normal(rng, (3, 5)), "b": normal(rng, (5,))}
    return params, normal(rng, (2, 3))
