"""The attention pattern matcher: which hand-written jnp attentions it finds in a jaxpr, and which it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.graph import patterns
from hamjax.graph.patterns import MIN_FILL, Match, matches

N, T, C = 2, 5, 4


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return tuple(jnp.asarray(rng.normal(size=(N, T, C)), jnp.float32) for _ in range(3))


def _jaxpr(f, *args):
    return jax.make_jaxpr(f)(*args).jaxpr


def _logits(q, k):
    return jnp.einsum("ntc,nsc->nts", q, k)


def _attend(probs, v):
    return jnp.einsum("nts,nsc->ntc", probs, v)


def _literals(factors):
    return [(float(f.val), divided) for f, divided in factors]


def _only(jaxpr) -> Match:
    (m,) = matches(jaxpr)
    assert m.q is jaxpr.invars[0] and m.k is jaxpr.invars[1] and m.v is jaxpr.invars[2]
    assert m.out is jaxpr.outvars[0]
    return m


def test_scaled_attention_is_found_with_its_factor_and_every_equation(qkv):
    j = _jaxpr(lambda q, k, v: _attend(jax.nn.softmax(_logits(q, k) * jnp.float32(0.5), axis=-1), v), *qkv)
    m = _only(j)
    assert m.equations == tuple(range(len(j.eqns)))
    assert _literals(m.factors) == [(0.5, False)]
    assert m.biases == () and m.mask is None and m.key_last
    assert m.q_axes == ((0,), 1, 2) and m.k_axes == ((0,), 1, 2) and m.v_axes == ((0,), 1, 2)
    assert m.out_perm == (0, 1, 2)


def test_prescaled_query_is_absorbed(qkv):
    q, k, v = (a[0] for a in qkv)  # unbatched (T, C)
    j = _jaxpr(lambda q, k, v: jax.nn.softmax((q / 2.0) @ k.T) @ v, q, k, v)
    (m,) = matches(j)
    assert m.q is j.invars[0] and m.v is j.invars[2]
    assert _literals(m.factors) == [(2.0, True)]
    assert m.q_axes == ((), 0, 1)
    (transpose,) = [i for i, e in enumerate(j.eqns) if e.primitive.name == "transpose"]
    assert m.k is j.eqns[transpose].outvars[0]  # k.T stays outside: the match reads it
    assert set(m.equations) == set(range(len(j.eqns))) - {transpose}  # the division is taken
    unscaled = matches(_jaxpr(lambda q, k, v: jax.nn.softmax(q @ k.T) @ v, q, k, v))
    assert len(unscaled) == 1 and unscaled[0].factors == ()


def test_additive_bias_is_found(qkv):
    bias = jnp.zeros((N, T, T), jnp.float32)
    j = _jaxpr(lambda q, k, v, b: _attend(jax.nn.softmax(_logits(q, k) * jnp.float32(0.5) + b), v), *qkv, bias)
    m = _only(j)
    ((var, divided_by, subtracted),) = m.biases
    assert var is j.invars[3] and divided_by == 0 and not subtracted
    assert _literals(m.factors) == [(0.5, False)] and m.mask is None


@pytest.mark.parametrize("attend_when", [True, False])
def test_where_mask_is_found_with_its_sense(qkv, attend_when):
    mask = jnp.ones((N, T, T), bool)

    def f(q, k, v, m):
        s, fill = _logits(q, k), jnp.float32(-1e9)  # made inside: a literal, not a constant of the jaxpr
        return _attend(jax.nn.softmax(jnp.where(m, s, fill) if attend_when else jnp.where(m, fill, s)), v)

    j = _jaxpr(f, *qkv, mask)
    m = _only(j)
    assert m.mask[0] is j.invars[3] and m.mask[1] is attend_when
    assert m.biases == ()


def test_plain_exp_over_sum_softmax_is_found(qkv):
    def f(q, k, v):
        e = jnp.exp(_logits(q, k) / jnp.float32(2.0))
        return _attend(e / jnp.sum(e, axis=-1, keepdims=True), v)

    j = _jaxpr(f, *qkv)
    m = _only(j)
    assert _literals(m.factors) == [(2.0, True)]
    assert m.equations == tuple(range(len(j.eqns)))


def test_scores_with_the_keys_first(qkv):
    def f(q, k, v):
        s = jnp.einsum("nsc,ntc->nst", k, q)
        return jnp.einsum("nst,nsc->ntc", jax.nn.softmax(s, axis=1), v)

    m = _only(_jaxpr(f, *qkv))
    assert not m.key_last


def test_two_attentions_are_found_in_order_and_disjoint(qkv):
    def f(q, k, v):
        y = _attend(jax.nn.softmax(_logits(q, k)), v)
        return _attend(jax.nn.softmax(_logits(y, k) * jnp.float32(0.25)), v)

    j = _jaxpr(f, *qkv)
    first, second = matches(j)
    assert max(first.equations) < min(second.equations)
    assert second.q is first.out and second.out is j.outvars[0]
    assert _literals(first.factors) == [] and _literals(second.factors) == [(0.25, False)]


def test_probabilities_used_elsewhere_are_refused(qkv):
    def both(q, k, v):
        p = jax.nn.softmax(_logits(q, k))
        return _attend(p, v), p

    assert matches(_jaxpr(both, *qkv)) == ()
    assert len(matches(_jaxpr(lambda *a: both(*a)[0], *qkv))) == 1  # the same attention, probabilities dropped

    def logits_too(q, k, v):
        s = _logits(q, k)
        return _attend(jax.nn.softmax(s), v), s

    assert matches(_jaxpr(logits_too, *qkv)) == ()

    def exponentials_too(q, k, v):
        e = jnp.exp(_logits(q, k))
        return _attend(e / jnp.sum(e, axis=-1, keepdims=True), v), e

    assert matches(_jaxpr(exponentials_too, *qkv)) == ()


@pytest.mark.parametrize("fill", [-1.0, -1e3, 0.0])
def test_a_where_mask_that_does_not_zero_its_entries_is_refused(qkv, fill):
    mask = jnp.ones((N, T, T), bool)

    def f(q, k, v, m):
        return _attend(jax.nn.softmax(jnp.where(m, _logits(q, k), jnp.float32(fill))), v)

    assert fill > MIN_FILL
    assert matches(_jaxpr(f, *qkv, mask)) == ()
    fused = _jaxpr(lambda q, k, v, m: _attend(jax.nn.softmax(jnp.where(m, _logits(q, k), MIN_FILL)), v), *qkv, mask)
    assert len(matches(fused)) == 1


def test_what_is_not_attention_is_refused(qkv):
    assert matches(_jaxpr(lambda q, k, v: _attend(jnp.tanh(_logits(q, k)), v), *qkv)) == ()
    # a softmax over the other axis than the one the second product contracts
    assert matches(_jaxpr(lambda q, k, v: _attend(jax.nn.softmax(_logits(q, k), axis=1), v), *qkv)) == ()
    # logits scaled by a full tensor, not a scalar
    w = jnp.ones((N, T, T), jnp.float32)
    assert matches(_jaxpr(lambda q, k, v, w: _attend(jax.nn.softmax(_logits(q, k) * w), v), *qkv, w)) == ()


def test_calls_are_not_looked_into(qkv):
    inner = jax.jit(lambda q, k, v: _attend(jax.nn.softmax(_logits(q, k)), v))
    j = _jaxpr(lambda q, k, v: inner(q, k, v) * 2.0, *qkv)
    assert matches(j) == ()
    (call,) = [e for e in j.eqns if "jaxpr" in e.params]
    assert len(patterns.matches(call.params["jaxpr"].jaxpr)) == 1
