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


def _transformer_apply(p, tokens):
    h = p["embed"][tokens] + p["pos"][None]
    b, t, d = h.shape
    qkv = (h @ p["attn_qkv"]).reshape(b, t, 3, 4, d // 4)
    scores = jnp.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) / jnp.float32(np.sqrt(d // 4))
    heads = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), qkv[:, :, 2])
    h = h + heads.reshape(b, t, d) @ p["attn_out"]
    h = h + jax.nn.gelu(h @ p["mlp_in"] + p["mlp_bias"][None, None]) @ p["mlp_out"]
    return h.mean(axis=1) @ p["head"]


def plain_transformer(seed=0):
    """``(apply_fn, params, tokens)`` of a one-block transformer in jax.numpy, named as a person might write it.

    ``embed`` (50, 64) is gathered and ``pos`` (16, 64) added to the tokens, ``attn_qkv`` is one fused (64, 192)
    kernel split into 4 heads, the MLP is 64-128-64 with ``mlp_bias``, ``head`` gives 10 logits; ``pos`` is the
    last path in name order. ``tokens`` is (2, 16) int32.
    """
    rng = np.random.default_rng(seed)
    shapes = {
        "attn_out": (64, 64), "attn_qkv": (64, 192), "embed": (50, 64), "head": (64, 10), "mlp_bias": (128,),
        "mlp_in": (64, 128), "mlp_out": (128, 64), "pos": (16, 64),
    }  # fmt: skip
    params = {k: normal(rng, v) / np.float32(np.sqrt(v[0])) for k, v in shapes.items()}
    return _transformer_apply, params, jnp.asarray(np.arange(32).reshape(2, 16) % 50, jnp.int32)


def _row_tokens_apply(p, x):
    tokens = x.reshape(x.shape[0], 8, 8)  # an 8x8 digit as 8 row tokens of 8 pixels
    h = jax.nn.relu(tokens @ p["proj"] + p["pos"][None])
    return h.reshape(h.shape[0], -1) @ p["head"]


def row_token_model(seed=0):
    """``(apply_fn, params)`` of a plain jnp model of 8x8x1 digits with an added (8, 16) ``pos`` table.

    Rows are tokens projected by ``proj`` (8, 16); ``pos`` (8, 16) is added to them, so a name-based filter takes it
    for a kernel; ``head`` (128, 10) gives the logits.
    """
    rng = np.random.default_rng(seed)
    params = {
        "proj": normal(rng, (8, 16)) / 3.0,
        "pos": normal(rng, (8, 16)) / 4.0,
        "head": normal(rng, (128, 10)) / 11.0,
    }
    return _row_tokens_apply, params
