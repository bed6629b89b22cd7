"""Attention fusion: found in NNX, Linen and plain jnp models, rewritten to one op, equal to the original."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import graph
from hamjax.graph import fused


def _close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b))) <= tol * max(1.0, float(np.max(np.abs(b))))


def _fused_count(apply_fn, params, x):
    return fused.count(jax.make_jaxpr(lambda p, xx: apply_fn(p, xx))(params, x))


@pytest.fixture(scope="module")
def vit():
    apply_fn, params = hamjax.functional(hamjax.models.build("vit", input_shape=(28, 28, 1)))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 28, 28, 1)), jnp.float32)
    return apply_fn, params, x


def test_vit_attention_fuses_and_matches(vit):
    apply_fn, params, x = vit
    fused, same = graph.fuse_attention(apply_fn, params)
    assert same is params
    assert _fused_count(fused, params, x) == 2
    assert _fused_count(apply_fn, params, x) == 0
    assert _close(jax.jit(fused)(params, x), jax.jit(apply_fn)(params, x))
    found = graph.find_attention(apply_fn, params, x)
    assert [(f.shape, f.keys, f.scale, f.bias, f.mask) for f in found] == [((3, 16, 4, 16), 16, 0.25, False, False)] * 2


def test_vit_fused_gradients_and_vmap_match(vit):
    apply_fn, params, x = vit
    fused, _ = graph.fuse_attention(apply_fn, params)
    g0 = jax.grad(lambda p: jnp.sum(apply_fn(p, x) ** 2))(params)
    g1 = jax.jit(jax.grad(lambda p: jnp.sum(fused(p, x) ** 2)))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        assert _close(a, b, 1e-4)
    batched = jax.vmap(lambda xx: fused(params, xx))(x[:, None])
    assert _close(batched[:, 0], apply_fn(params, x))


class _LinenAttention(nn.Module):
    @nn.compact
    def __call__(self, x, mask):
        y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(x, mask=mask)
        return nn.Dense(3)(y.mean(axis=1))


def test_linen_multi_head_attention_with_a_where_mask():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 8)), jnp.float32)
    keep = jnp.asarray(np.arange(5) < 3)
    mask = jnp.broadcast_to(keep[None, None, None, :], (2, 1, 5, 5))
    model = _LinenAttention()
    variables = model.init(jax.random.key(0), x, mask)

    def apply_fn(p, xx):
        return model.apply(p, xx, mask)

    fused, _ = graph.fuse_attention(apply_fn, variables)
    (found,) = graph.find_attention(apply_fn, variables, x)
    assert found.mask and not found.bias and found.shape == (2, 5, 2, 4)
    assert _fused_count(fused, variables, x) == 1
    assert _close(jax.jit(fused)(variables, x), apply_fn(variables, x))


def _plain(p, x, *, bias=None, manual=False, merged_heads=False):
    """A hand-written multi-head attention: (N, T, C) -> (N, T, C)."""
    n, t, c = x.shape
    heads = 2
    q, k, v = ((x @ p[w]).reshape(n, t, heads, c // heads) for w in ("q", "k", "v"))
    if merged_heads:  # (N * heads, T, D): one batch axis
        q, k, v = (a.transpose(0, 2, 1, 3).reshape(n * heads, t, c // heads) for a in (q, k, v))
        s = jnp.einsum("btd,bsd->bts", q, k) * np.float32(1 / np.sqrt(c // heads))
    else:
        s = jnp.einsum("nthd,nshd->nhts", q, k) * np.float32(1 / np.sqrt(c // heads))
    if bias is not None:
        s = s + bias
    if manual:
        e = jnp.exp(s)
        probs = e / jnp.sum(e, axis=-1, keepdims=True)
    else:
        probs = jax.nn.softmax(s, axis=-1)
    if merged_heads:
        y = jnp.einsum("bts,bsd->btd", probs, v).reshape(n, heads, t, c // heads).transpose(0, 2, 1, 3)
    else:
        y = jnp.einsum("nhts,nshd->nthd", probs, v)
    return y.reshape(n, t, c) @ p["o"]


@pytest.fixture(scope="module")
def plain():
    rng = np.random.default_rng(2)
    params = {w: jnp.asarray(rng.normal(size=(8, 8)) / 3, jnp.float32) for w in ("q", "k", "v", "o")}
    x = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
    return params, x


@pytest.mark.parametrize(
    "kw",
    [{}, {"manual": True}, {"merged_heads": True}],
    ids=["softmax", "exp-over-sum", "one-batch-axis"],
)
def test_plain_jnp_attention_forms(plain, kw):
    params, x = plain

    def apply_fn(p, xx):
        return _plain(p, xx, **kw)

    fused, _ = graph.fuse_attention(apply_fn, params)
    assert _fused_count(fused, params, x) == 1
    assert _close(jax.jit(fused)(params, x), apply_fn(params, x))


def test_additive_mask_is_fused_as_a_bias(plain):
    params, x = plain
    bias = jnp.where(jnp.tril(jnp.ones((6, 6), bool)), 0.0, -1e9).astype(jnp.float32)[None, None]
    bias = jnp.broadcast_to(bias, (2, 2, 6, 6))

    def apply_fn(p, xx):
        return _plain(p, xx, bias=bias)

    (found,) = graph.find_attention(apply_fn, params, x)
    assert found.bias and not found.mask
    fused, _ = graph.fuse_attention(apply_fn, params, implementation="xla")
    assert _close(jax.jit(fused)(params, x), apply_fn(params, x))


def test_unbatched_single_head_and_prescaled_query():
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) for _ in range(3))

    def apply_fn(p, xx):
        del p
        return jax.nn.softmax((xx / 2.0) @ k.T) @ v

    fused, _ = graph.fuse_attention(apply_fn, {})
    (found,) = graph.find_attention(apply_fn, {}, q)
    assert found.shape == (1, 5, 1, 4) and found.scale == 0.5
    assert _close(jax.jit(fused)({}, q), apply_fn({}, q))


def test_probabilities_used_elsewhere_are_not_fused(plain):
    params, x = plain

    def apply_fn(p, xx):
        s = jnp.einsum("ntc,nsc->nts", xx @ p["q"], xx @ p["k"])
        probs = jax.nn.softmax(s)
        return probs @ (xx @ p["v"]), probs

    assert graph.find_attention(lambda p, xx: apply_fn(p, xx)[0] + 0 * apply_fn(p, xx)[1].sum(), params, x)
    assert graph.find_attention(lambda p, xx: apply_fn(p, xx)[0], params, x)
    with_probs = graph.find_attention(lambda p, xx: jnp.concatenate(apply_fn(p, xx), axis=-1)[..., :8], params, x)
    assert with_probs == ()


def test_bad_implementation_is_refused_before_tracing():
    with pytest.raises(ValueError, match="fuse_attention: implementation"):
        graph.fuse_attention(lambda p, x: x, {}, implementation="flash")
