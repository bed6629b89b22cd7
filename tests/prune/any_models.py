"""Models written here, not taken from hamjax.models, for the channel-group and shrink tests.

Each builder returns ``(apply_fn, params, x)`` with random params (variances
positive) so that a slice a mask or a shrink misses changes the output.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hamjax


def randomize(tree, seed=0):
    """Random leaves (variances and norm scales positive) so every parameter slice matters."""
    rng = np.random.default_rng(seed)

    def draw(path, a):
        noise = rng.normal(size=a.shape)
        positive = jax.tree_util.keystr(path).endswith(("['var']", "['scale']"))
        value = 0.5 + np.abs(noise) if positive else 0.5 * noise
        return jnp.asarray(value, a.dtype)

    return jax.tree_util.tree_map_with_path(draw, tree)


def _input(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


class ResNet(nn.Module):
    """A ResNet-style CNN: conv-BN-relu stem, an identity block, a strided block with a 1x1 projection."""

    width: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(name):
            return nn.BatchNorm(use_running_average=not train, name=name)

        h = nn.relu(bn("stem_bn")(nn.Conv(self.width, (3, 3), name="stem")(x)))
        r = nn.relu(bn("b1_bn1")(nn.Conv(self.width, (3, 3), name="b1_conv1")(h)))
        h = nn.relu(h + bn("b1_bn2")(nn.Conv(self.width, (3, 3), name="b1_conv2")(r)))
        r = nn.relu(bn("b2_bn1")(nn.Conv(2 * self.width, (3, 3), strides=2, name="b2_conv1")(h)))
        r = bn("b2_bn2")(nn.Conv(2 * self.width, (3, 3), name="b2_conv2")(r))
        h = nn.relu(r + nn.Conv(2 * self.width, (1, 1), strides=2, name="b2_proj")(h))
        return nn.Dense(3, name="head")(h.mean(axis=(1, 2)))


def resnet():
    x = _input((2, 8, 8, 1), 2)
    module = ResNet()
    apply_fn, variables = hamjax.linen_functional(module, module.init(jax.random.key(0), x))
    return apply_fn, randomize(variables), x


def transformer_params(seed=0, *, d=16, heads=4, hidden=32, tokens=6, features=5, classes=3, blocks=2):
    """Params of :func:`transformer_apply`, with odd names (``tok``, ``pos``, ``qkv``, ``wo``, ``up``, ``dn``)."""
    shapes = {"tok": (features, d), "pos": (tokens, d), "out": (d, classes)}
    for b in range(blocks):
        shapes[f"blk{b}"] = {"qkv": (d, 3 * d), "qkv_b": (3 * d,), "wo": (d, d), "g": (d,), "up": (d, hidden)}
        shapes[f"blk{b}"] |= {"up_b": (hidden,), "dn": (hidden, d)}
    tree = jax.tree.map(jnp.zeros, shapes, is_leaf=lambda s: isinstance(s, tuple))
    return randomize(tree, seed), heads


def transformer_apply(heads):
    """A plain-jnp transformer: fused qkv reshaped to (3, heads, head_dim), RMS-style norm, GELU MLP."""

    def norm(h, g):
        return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * g[None, None]

    def apply_fn(p, x):
        h = x @ p["tok"] + p["pos"][None]
        for name in sorted(k for k in p if k.startswith("blk")):
            q = p[name]
            b, t, d = h.shape
            qkv = (norm(h, q["g"]) @ q["qkv"] + q["qkv_b"][None, None]).reshape(b, t, 3, heads, d // heads)
            qh, kh, vh = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            scores = jnp.einsum("bthd,bshd->bhts", qh, kh) / np.sqrt(d // heads).astype(np.float32)
            att = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), vh).reshape(b, t, -1)
            h = h + att @ q["wo"]
            h = h + jax.nn.gelu(h @ q["up"] + q["up_b"][None, None]) @ q["dn"]
        return h.mean(axis=1) @ p["out"]

    return apply_fn


def transformer():
    params, heads = transformer_params()
    return transformer_apply(heads), params, _input((2, 6, 5), 3)


class NormMLP(nnx.Module):
    """An NNX MLP with LayerNorm after its second layer."""

    def __init__(self, hidden=8, width=6, *, rngs):
        self.a = nnx.Linear(5, hidden, rngs=rngs)
        self.b = nnx.Linear(hidden, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.out = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.norm(self.b(nnx.gelu(self.a(x))))))


def norm_mlp():
    apply_fn, variables = hamjax.functional(NormMLP(rngs=nnx.Rngs(0)))
    return apply_fn, randomize(variables), _input((4, 5), 4)


class ConcatMLP(nn.Module):
    """A Linen MLP whose two branches are concatenated before the next layer."""

    @nn.compact
    def __call__(self, x):
        left = nn.relu(nn.Dense(6, name="left")(x))
        right = jnp.tanh(nn.Dense(4, name="right")(x))
        h = nn.relu(nn.Dense(8, name="mix")(jnp.concatenate([left, x, right], axis=-1)))
        return nn.Dense(3, name="head")(h)


def concat_mlp():
    x = _input((4, 5), 5)
    module = ConcatMLP()
    return module.apply, randomize(module.init(jax.random.key(0), x)), x


class SeparableCNN(nn.Module):
    """A depthwise-separable CNN: pointwise 1x1, depthwise 3x3 (multiplier 2), pointwise 1x1."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(6, (1, 1), name="expand")(x))
        h = nn.relu(nn.Conv(12, (3, 3), feature_group_count=6, name="depthwise")(h))
        h = nn.relu(nn.Conv(8, (1, 1), name="project")(h))
        return nn.Dense(3, name="head")(h.mean(axis=(1, 2)))


def separable_cnn():
    x = _input((2, 6, 6, 3), 6)
    module = SeparableCNN()
    return module.apply, randomize(module.init(jax.random.key(0), x)), x


BUILDERS = {
    "resnet": resnet,
    "transformer": transformer,
    "norm_mlp": norm_mlp,
    "concat_mlp": concat_mlp,
    "separable_cnn": separable_cnn,
}
