"""Single equations of hamjax.jaxpr.equations: inlinable call bodies, re-binding, the site and marker primitives."""

import dataclasses

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import checkpoint_name

from hamjax import jaxpr


def _eqns(f, *args):
    return jax.make_jaxpr(f)(*args).jaxpr.eqns


def test_call_body_of_jit_checkpoint_and_custom_jvp():
    x = jnp.ones(3)
    for wrap in (jax.jit, jax.checkpoint, jax.nn.relu):
        f = wrap if wrap is jax.nn.relu else wrap(jnp.sin)
        (eqn,) = _eqns(f, x)
        body, consts = jaxpr.call_body(eqn)
        assert body.eqns and all(isinstance(c, jax.Array | np.ndarray) for c in consts)
    (eqn,) = _eqns(jax.jit(jnp.sin), x)
    assert [e.primitive.name for e in jaxpr.call_body(eqn)[0].eqns] == ["sin"]


def test_call_body_is_none_for_primitives_and_control_flow():
    x = jnp.ones(3)
    assert jaxpr.call_body(_eqns(jnp.sin, x)[0]) is None
    (scan,) = _eqns(lambda x: jax.lax.scan(lambda c, _: (jnp.sin(c), None), x, None, length=2)[0], x)
    assert scan.primitive.name == "scan" and jaxpr.call_body(scan) is None


def test_bind_equation_reproduces_every_equation():
    w = jnp.arange(12.0).reshape(3, 4)
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

    def f(x, w):
        return jnp.tanh(x @ w).sum(axis=0), jnp.argmax(x, axis=1)

    closed = jax.make_jaxpr(f)(x, w)
    env = dict(zip(closed.jaxpr.invars, (x, w), strict=True))
    for eqn in closed.jaxpr.eqns:
        outs = jaxpr.bind_equation(eqn, [v.val if isinstance(v, jcore.Literal) else env[v] for v in eqn.invars])
        assert isinstance(outs, list) and len(outs) == len(eqn.outvars)
        env.update(zip(eqn.outvars, outs, strict=True))
    for got, want in zip((env[v] for v in closed.jaxpr.outvars), f(x, w), strict=True):
        np.testing.assert_array_equal(got, want)


def test_site_and_marker_primitives():
    x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    names = [e.primitive.name for e in _eqns(lambda x, w: checkpoint_name(x @ w, "h"), x, w)]
    assert names == [jaxpr.SITE_PRIMITIVES[0], jaxpr.MARKER_PRIMITIVE]
    conv = _eqns(lambda x, k: jax.lax.conv(x, k, (1, 1), "SAME"), jnp.ones((1, 2, 5, 5)), jnp.ones((4, 2, 3, 3)))
    assert [e.primitive.name for e in conv] == [jaxpr.SITE_PRIMITIVES[1]]


def test_site_is_frozen_and_compares_without_dimension_numbers():
    a = jaxpr.Site("['w']", "['w']", "dot_general", 1, (1,), (1,), (2, 3), (3, 4), dimension_numbers="x", path="w")
    b = jaxpr.Site("['w']", "['w']", "dot_general", 1, (1,), (1,), (2, 3), (3, 4), dimension_numbers="y", path="w")
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "other"
