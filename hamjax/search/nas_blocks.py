"""The numeric building blocks of :mod:`hamjax.search.nas`'s supernet and of the small models it materialises.

Every function works on tokens ``(N, T, F)`` (or images ``(N, H, W, C)``
for the stem) under ``jax_numpy_rank_promotion="raise"``; a ``mask`` of
inner units (``(W,)`` of 0/1, or ``None`` for none) zeroes the units beyond a
layer's chosen width. The supernet calls them at the allocated width with
masks, the materialised model at the chosen width without.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
}
LN_EPS = 1e-6


class Normals:
    """Consecutive slices of ONE standard-normal draw, each scaled: ``normal(shape, scale)``.

    One random-bits computation instead of one per weight: the jitted init
    compiles several times faster, which matters when a population of
    supernets is initialised under ``vmap``.

    Args:
      key: a PRNG key.
      total: the number of normals drawn; :meth:`done` says whether exactly
        that many were used.

    Examples:
      >>> import jax
      >>> normal = Normals(jax.random.key(0), 6)
      >>> normal((2, 2), 0.1).shape, normal((2,), 1.0).shape, normal.done()
      ((2, 2), (2,), True)
    """

    def __init__(self, key: jax.Array, total: int):
        self._flat = jax.random.normal(key, (total,), jnp.float32)
        self._offset = 0

    def __call__(self, shape: tuple[int, ...], scale: float) -> jax.Array:
        n = math.prod(shape)
        out = self._flat[self._offset : self._offset + n].reshape(shape) * scale
        self._offset += n
        return out

    def done(self) -> bool:
        """Whether every drawn normal was used."""
        return self._offset == self._flat.shape[0]


def layer_norm_params(d: int) -> dict:
    """Fresh layer-norm params of width ``d``: scale ones, bias zeros, float32.

    Args:
      d: the feature width.

    Returns:
      ``{"scale": (d,), "bias": (d,)}``.

    Examples:
      >>> layer_norm_params(3)["scale"].tolist()
      [1.0, 1.0, 1.0]
    """
    return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}


def vec(v: jax.Array) -> jax.Array:
    """A (F,) vector shaped to broadcast against (N, T, F) under rank_promotion='raise'."""
    return v[None, None, :]


def layer_norm(p: dict, x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * vec(p["scale"]) + vec(p["bias"])


def masked(h: jax.Array, mask: jax.Array | None) -> jax.Array:
    return h if mask is None else h * vec(mask.astype(h.dtype))


def shifted(x: jax.Array, stride: int) -> list[jax.Array]:
    """The nine 3x3 neighbours of every output position, zero padding 1: ``x[s*i + a - 1, s*j + b - 1]``.

    ``x`` is ``(N, H, W, C)`` with ``H`` and ``W`` divisible by ``stride``; each
    result is ``(N, H / stride, W / stride, C)``, in row-major ``(a, b)`` order.
    """
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, a : a + h : stride, b : b + w : stride, :] for a in range(3) for b in range(3)]


def stem_conv(p: dict, x: jax.Array) -> jax.Array:
    """relu of a 3x3 convolution of stride 2 (zero padding 1), as one matmul over the stacked neighbours."""
    _, _, c_in, c_out = p["kernel"].shape
    neighbours = jnp.concatenate(shifted(x, 2), axis=-1)  # (N, H/2, W/2, 9 * c_in), (a, b, c) order
    y = neighbours @ p["kernel"].reshape(9 * c_in, c_out) + p["bias"][None, None, None, :]
    return jax.nn.relu(y)


def head(params: dict, x: jax.Array) -> jax.Array:
    pooled = jnp.mean(layer_norm(params["head"]["ln"], x), axis=1)
    return pooled @ params["head"]["kernel"] + params["head"]["bias"][None, :]


def dense(p, h, act, mask):
    u = masked(act(h @ p["w1"] + vec(p["b1"])), mask)
    return u @ p["w2"] + vec(p["b2"])


def attention(p, h, act, mask, num_heads, head_dim, active_head_dim):
    n, t, _ = h.shape

    def heads(w):
        return masked(h @ w, mask).reshape(n, t, num_heads, head_dim)

    q, k, v = heads(p["q"]), heads(p["k"]), heads(p["v"])
    scale = jax.lax.rsqrt(jnp.asarray(active_head_dim, jnp.float32))
    scores = jnp.einsum("nqhd,nkhd->nhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, t, num_heads * head_dim)
    return masked(act(out), mask) @ p["out"]


def conv(p, h, act, mask, grid):
    n, _, _ = h.shape
    gh, gw = grid
    u = masked(h @ p["w_in"], mask)
    channels = u.shape[-1]
    # Depthwise 3x3 as nine shifted multiply-adds, not a grouped lax.conv_general_dilated: under vmap
    # over members that each hold a kernel, XLA:CPU ran the grouped convolution hundreds of times slower
    # (one step of 32 default supernets at batch 32 did not finish in 290 s; with shifts, about 0.75 s).
    kernel = p["kernel"].reshape(9, channels)
    terms = shifted(u.reshape(n, gh, gw, channels), 1)
    u = terms[0] * kernel[0][None, None, None, :]
    for j in range(1, 9):
        u = u + terms[j] * kernel[j][None, None, None, :]
    u = masked(act(u.reshape(n, gh * gw, channels)), mask)
    return u @ p["w_out"]


def select_activation(index: jax.Array) -> Callable[[jax.Array], jax.Array]:
    def act(h):
        out = ACTIVATION_FNS[ACTIVATIONS[0]](h)
        for j, name in enumerate(ACTIVATIONS[1:], start=1):
            out = jnp.where(index == j, ACTIVATION_FNS[name](h), out)
        return out

    return act
