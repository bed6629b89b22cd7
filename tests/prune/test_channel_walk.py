"""The channel walk over a jaxpr: records per equation, slices with offsets, concatenations, reshapes, gathers."""

import jax
import jax.numpy as jnp
from jax import export

from hamjax.jaxpr import call_body
from hamjax.prune.channel_tags import Cat, Chan, ChannelGraph, DataTag, ParamTag, View
from hamjax.prune.channel_walk import reshape_groups, walk


def _walk(fn, params, x):
    leaves = jax.tree.leaves(params)
    closed = jax.make_jaxpr(lambda flat, xx: fn(jax.tree.unflatten(jax.tree.structure(params), flat), xx))(leaves, x)
    g = ChannelGraph([str(i) for i in range(len(leaves))], [a.shape for a in leaves])
    tags = [ParamTag(((i, tuple(range(a.ndim))),)) for i, a in enumerate(leaves)]
    tags += [DataTag((None,) * len(v.aval.shape)) for v in closed.jaxpr.invars[len(leaves) :]]
    return g, walk(g, closed.jaxpr, tags), closed


def _leaf_equations(jaxpr):
    out = []
    for eqn in jaxpr.eqns:
        sub = call_body(eqn)
        out += _leaf_equations(sub[0]) if sub is not None else [eqn.primitive.name]
    return out


def test_every_equation_outside_calls_is_recorded_in_order():
    params = {"w": jnp.ones((3, 4))}
    g, _, closed = _walk(lambda p, x: jax.nn.relu(x @ p["w"]), params, jnp.ones((2, 3)))
    names = _leaf_equations(closed.jaxpr)
    assert any(e.primitive.name == "pjit" or call_body(e) is not None for e in closed.jaxpr.eqns)  # relu is a call
    assert len(g.record) == len(names) and names[0] == "dot_general"
    assert isinstance(g.record[0][0], DataTag) and isinstance(g.record[0][0].axes[1], Chan)


def test_a_slice_of_a_channel_axis_is_a_view_with_an_offset():
    params = {"w": jnp.ones((3, 8))}
    g, (out,), _ = _walk(lambda p, x: (x @ p["w"])[:, 4:], params, jnp.ones((2, 3)))
    (view,) = out.axes[1].views
    assert (view.block, view.offset, g.size[view.node]) == (1, 4, 8)


def test_a_concatenation_gives_segments():
    params = {"a": jnp.ones((3, 2)), "b": jnp.ones((3, 5))}
    _, (out,), _ = _walk(lambda p, x: jnp.concatenate([x @ p["a"], x, x @ p["b"]], -1), params, jnp.ones((2, 3)))
    assert isinstance(out.axes[1], Cat)
    assert [(s is None, a, b) for s, a, b in out.axes[1].segments] == [(False, 0, 2), (True, 2, 5), (False, 5, 10)]


def test_a_reshape_that_splits_a_channel_axis_derives_one_node_per_new_axis():
    params = {"w": jnp.ones((3, 24))}
    g, (out,), _ = _walk(lambda p, x: (x @ p["w"]).reshape(2, 3, 4, 2), params, jnp.ones((2, 3)))
    sizes = [g.size[v.node] for e in out.axes[1:] for v in e.views]
    assert sizes == [3, 4, 2] and len(g.children) == 3
    assert reshape_groups((2, 24), (2, 3, 4, 2)) == [([0], [0]), ([1], [1, 2, 3])]


def test_a_constant_index_gather_under_a_symbolic_batch_keeps_the_other_axes():
    (b,) = export.symbolic_shape("B")
    params = {"w": jnp.ones((3, 12))}
    spec = jax.ShapeDtypeStruct((b, 3), jnp.float32)
    g, (out,), closed = _walk(lambda p, x: (x @ p["w"]).reshape(x.shape[0], 3, 4)[:, 0], params, spec)
    assert "gather" in [e.primitive.name for e in closed.jaxpr.eqns]
    assert isinstance(out.axes[1], Chan) and g.size[out.axes[1].views[0].node] == 4
    three = next(n for n in range(len(g.parent)) if g.size[n] == 3 and n in g.reasons)
    assert "gather of some indices of a channel axis" in g.reasons[three][0]


def test_view_of_a_merge_keeps_both_digits():
    params = {"w": jnp.ones((3, 8))}
    g, (out,), _ = _walk(lambda p, x: (x @ p["w"]).reshape(2, 4, 2).reshape(2, 8), params, jnp.ones((2, 3)))
    blocks = sorted((v.block, g.size[v.node]) for v in out.axes[1].views)
    assert blocks == [(1, 2), (2, 4)] and all(isinstance(v, View) for v in out.axes[1].views)
