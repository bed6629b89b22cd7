"""The fused attention op: equal to an explicit softmax attention, differentiable, batchable, counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.graph import fused
from hamjax.graph.fused import attention_p, fused_attention

B, T, S, N, H = 2, 3, 5, 2, 4
SCALE = 0.5


def _explicit(q, k, v, bias=None, mask=None, *, scale=SCALE):
    """``softmax(q k^T * scale + bias) v`` written out, in the ``(B, T, N, H)`` layout."""
    s = jnp.einsum("btnh,bsnh->bnts", q, k) * jnp.float32(scale)
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = jnp.where(mask, s, jnp.float32(-1e30))
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, axis=-1), v)


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(B, S, N, H)), jnp.float32) for _ in range(2))
    bias = jnp.asarray(rng.normal(size=(B, N, T, S)), jnp.float32)
    mask = jnp.asarray(np.arange(S)[None, None, None, :] <= np.arange(T)[None, None, :, None] + 1)
    return q, k, v, bias, jnp.broadcast_to(mask, (B, N, T, S))


@pytest.mark.parametrize("extras", ["none", "bias", "mask", "both"])
def test_equals_dot_product_attention_and_the_explicit_form(qkv, extras):
    q, k, v, bias, mask = qkv
    bias = bias if extras in ("bias", "both") else None
    mask = mask if extras in ("mask", "both") else None
    y = fused_attention(q, k, v, bias, mask, scale=SCALE)
    assert y.shape == (B, T, N, H) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, jax.nn.dot_product_attention(q, k, v, bias, mask, scale=SCALE), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, _explicit(q, k, v, bias, mask), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda *a: fused_attention(*a, scale=SCALE))(q, k, v, bias, mask), y, 1e-5, 1e-6)


def test_scale_and_mask_change_the_result(qkv):
    q, k, v, _, mask = qkv
    y = fused_attention(q, k, v, scale=SCALE)
    assert not np.allclose(fused_attention(q, k, v, scale=1.0), y, atol=1e-4)
    assert not np.allclose(fused_attention(q, k, v, mask=mask, scale=SCALE), y, atol=1e-4)


@pytest.mark.parametrize("extras", ["none", "bias", "mask"])
def test_jvp_and_grad_match_the_explicit_form(qkv, extras):
    q, k, v, bias, mask = qkv
    bias = bias if extras == "bias" else None
    mask = mask if extras == "mask" else None
    args = (q, k, v) if bias is None else (q, k, v, bias)

    def f(*a):
        return fused_attention(*a[:3], a[3] if len(a) > 3 else None, mask, scale=SCALE)

    def g(*a):
        return _explicit(*a[:3], a[3] if len(a) > 3 else None, mask)

    tangents = tuple(
        jnp.asarray(np.random.default_rng(i).normal(size=a.shape), jnp.float32) for i, a in enumerate(args)
    )
    (y0, t0), (y1, t1) = jax.jvp(f, args, tangents), jax.jvp(g, args, tangents)
    np.testing.assert_allclose(y0, y1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t0, t1, rtol=1e-4, atol=1e-5)
    argnums = tuple(range(len(args)))
    g0 = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=argnums))(*args)
    g1 = jax.grad(lambda *a: jnp.sum(g(*a) ** 2), argnums=argnums)(*args)
    for a, b in zip(g0, g1, strict=True):
        assert float(jnp.abs(b).max()) > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_vmap_equals_a_loop(qkv):
    q, k, v, bias, mask = qkv
    stacked = [jnp.stack([a, a * jnp.float32(0.5), -a]) for a in (q, k, v, bias)]

    def one(qq, kk, vv, bb):
        return fused_attention(qq, kk, vv, bb, mask, scale=SCALE)

    batched = jax.jit(jax.vmap(one))(*stacked)
    loop = jnp.stack([one(*(a[i] for a in stacked)) for i in range(3)])
    assert batched.shape == (3, B, T, N, H)
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-6)
    # vmapped over q only, k and v shared
    only_q = jax.vmap(lambda qq: fused_attention(qq, k, v, scale=SCALE))(stacked[0])
    np.testing.assert_allclose(only_q[1], _explicit(q * jnp.float32(0.5), k, v), rtol=1e-5, atol=1e-6)


def test_stays_one_equation_and_count_counts_it(qkv):
    q, k, v, bias, _ = qkv
    plain = jax.make_jaxpr(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=SCALE))(q, k, v)
    assert fused.count(plain) == 0

    def two(q, k, v, b):
        y = fused_attention(q, k, v, b, scale=SCALE)
        return jax.jit(lambda a: fused_attention(a, k, v, scale=SCALE))(y)  # the second inside a call

    closed = jax.make_jaxpr(two)(q, k, v, bias)
    assert fused.count(closed) == 2
    assert fused.count(closed.jaxpr) == 2
    top = [e for e in closed.jaxpr.eqns if e.primitive is attention_p]
    assert len(top) == 1
    assert top[0].params == {"scale": SCALE, "has_bias": True, "has_mask": False, "implementation": None}
