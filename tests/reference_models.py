"""Reference models with random (not initialised) variables, shared by the pruning tests."""

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
