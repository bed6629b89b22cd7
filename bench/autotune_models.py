"""The eight small models of bench/autotune.py, trained once per process on the bundled digits.

Two sizes each of: the reference MLP and CNN (Flax NNX), the reference ViT
(NNX, 2x2 patches of the 8x8 images) and a plain-``jnp`` transformer written
here (the 8 rows of an image are its 8 tokens; a fused qkv projection,
RMS-style norm, GELU MLP, mean pooling). Each is trained with
:func:`hamjax.train.fit` (Adam, early stopping on the validation split)
before autotune sees it: autotune starts from a trained model.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import hamjax
from hamjax import data as data_lib
from hamjax import models
from hamjax.train import TrainConfig, fit

DATA = {"name": "digits", "seed": 0, "val_fraction": 0.3, "test_fraction": 0.2}


def dataset():
    """The digits split every part uses: 30% validation (539 images, so a point of accuracy is 5 of them), 20% test."""
    return data_lib.load(**DATA)


def _reference(name: str, **overrides):
    def build(ds):
        module = models.build(name, seed=0, input_shape=ds.input_shape, num_classes=ds.num_classes, **overrides)
        apply_fn, params = hamjax.functional(module)
        return apply_fn, params, models.config_of(module)

    return build


def transformer_params(key, *, d: int, heads: int, hidden: int, blocks: int, tokens: int = 8, features: int = 8):
    """Params of :func:`transformer_apply` (a dict of arrays, scaled normal initialisation)."""
    shapes = {"tok": (features, d), "pos": (tokens, d), "out": (d, 10), "out_b": (10,)}
    for b in range(blocks):
        shapes[f"blk{b}"] = {"qkv": (d, 3 * d), "qkv_b": (3 * d,), "wo": (d, d), "g": (d,), "up": (d, hidden)}
        shapes[f"blk{b}"] |= {"up_b": (hidden,), "dn": (hidden, d)}
    leaves, tree = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(leaves))
    arrays = []
    for k, shape in zip(keys, leaves, strict=True):
        if len(shape) == 1:
            arrays.append(jnp.ones(shape, jnp.float32) if shape[0] == d else jnp.zeros(shape, jnp.float32))
        else:
            arrays.append(jax.random.normal(k, shape, jnp.float32) / np.sqrt(shape[0]).astype(np.float32))
    return jax.tree.unflatten(tree, arrays)


def transformer_apply(heads: int):
    """A plain-jnp transformer over the 8 rows of an 8x8 image."""

    def norm(h, g):
        return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * g[None, None]

    def apply_fn(p, x):
        h = x.reshape(x.shape[0], 8, 8) @ p["tok"] + p["pos"][None]
        for name in sorted(k for k in p if k.startswith("blk")):
            q = p[name]
            b, t, d = h.shape
            qkv = (norm(h, q["g"]) @ q["qkv"] + q["qkv_b"][None, None]).reshape(b, t, 3, heads, d // heads)
            qh, kh, vh = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            scores = jnp.einsum("bthd,bshd->bhts", qh, kh) / np.sqrt(d // heads).astype(np.float32)
            att = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), vh).reshape(b, t, -1)
            h = h + att @ q["wo"]
            h = h + jax.nn.gelu(h @ q["up"] + q["up_b"][None, None]) @ q["dn"]
        return h.mean(axis=1) @ p["out"] + p["out_b"][None]

    return apply_fn


def _transformer(d: int, heads: int, hidden: int, blocks: int):
    def build(ds):
        params = transformer_params(jax.random.key(0), d=d, heads=heads, hidden=hidden, blocks=blocks)
        return transformer_apply(heads), params, None

    return build


MODELS = {
    "mlp-s": _reference("mlp", sizes=(64, 128, 128, 10)),
    "mlp-l": _reference("mlp", sizes=(64, 512, 512, 10)),
    "cnn-s": _reference("cnn", channels=(16, 32), dense=(64,)),
    "cnn-l": _reference("cnn", channels=(32, 64), dense=(256,)),
    "vit-s": _reference("vit", hidden_size=32, num_layers=2, num_heads=4, mlp_ratio=2.0, patch_size=2),
    "vit-l": _reference("vit", hidden_size=64, num_layers=3, num_heads=4, mlp_ratio=2.0, patch_size=2),
    "jnp-transformer-s": _transformer(d=32, heads=4, hidden=64, blocks=2),
    "jnp-transformer-l": _transformer(d=64, heads=4, hidden=128, blocks=3),
}
"""Name -> ``build(dataset) -> (apply_fn, params, config)`` of an untrained model."""

QUICK = ("mlp-s", "cnn-s", "vit-s", "jnp-transformer-s")
"""The models ``--quick`` runs: one of each kind, the small size."""


@functools.cache
def trained(name: str):
    """``(apply_fn, params, config, seconds)`` of ``name`` trained on :func:`dataset` (once per process)."""
    ds = dataset()
    apply_fn, params, config = MODELS[name](ds)
    started = time.perf_counter()
    config_train = TrainConfig(epochs=30, batch_size=64, learning_rate=2e-3, patience=6, seed=0)
    result = fit(apply_fn, params, ds, config_train)
    return apply_fn, result.params, config, time.perf_counter() - started
