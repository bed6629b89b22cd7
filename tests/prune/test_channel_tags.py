"""The tag rules of the channel walk: elementwise joins, signs, broadcasting, products, depthwise convolutions."""

import jax
import jax.numpy as jnp

from hamjax.prune.channel_tags import (
    BCAST,
    Chan,
    ChannelGraph,
    DataTag,
    ParamTag,
    View,
    elementwise,
    is_channel,
    nodes_of,
)


def _graph():
    return ChannelGraph(["['w']", "['b']"], [(3, 4), (4,)])


def _eqn(fn, *args):
    return jax.make_jaxpr(fn)(*args).jaxpr.eqns[-1]


def test_adding_a_bias_makes_it_a_member_of_the_channel():
    g = _graph()
    channel = Chan((View(g.new(4), 1, 0),))
    out = elementwise(g, "add", [DataTag((None, channel)), ParamTag(((1, (None, 0)),))], (2, 4))
    assert out.axes == (None, channel)
    assert g.members[0] == {(1, 0, 1, 0, 4, 0)}  # leaf 1, axis 0, block 1, [0, 4), offset 0


def test_two_channels_added_are_one_group_and_a_plain_data_axis_blocks_it():
    g = _graph()
    a, b = g.new(4), g.new(4)
    out = elementwise(
        g, "add", [DataTag((None, Chan((View(a, 1, 0),)))), DataTag((None, Chan((View(b, 1, 0),))))], (2, 4)
    )
    assert g.find(a) == g.find(b) and nodes_of(out.axes[1]) == [g.find(a)]
    c = g.new(4)
    elementwise(g, "add", [DataTag((None, Chan((View(c, 1, 0),)))), DataTag((None, None))], (2, 4))
    assert "not a channel of the same group" in g.reasons[c][0]


def test_a_log_is_followed_only_for_a_positive_operand():
    g = _graph()
    n = g.new(4)
    channel = Chan((View(n, 1, 0),))
    x = jnp.ones((2, 4))
    positive = elementwise(g, "exp", [DataTag((None, channel))], (2, 4), _eqn(jnp.exp, x))
    assert positive.sign == "pos"
    elementwise(g, "log", [positive], (2, 4), _eqn(jnp.log, x))
    assert n not in g.reasons
    elementwise(g, "log", [DataTag((None, channel))], (2, 4), _eqn(jnp.log, x))
    assert "log of a channel" in g.reasons[n][0]


def test_a_size_one_operand_axis_broadcasts():
    g = _graph()
    channel = Chan((View(g.new(4), 1, 0),))
    eqn = _eqn(lambda a, b: jax.lax.add(a, b), jnp.ones((2, 4)), jnp.ones((2, 4)))
    fake = eqn.replace(invars=[eqn.invars[0], type(eqn.invars[1])(jax.core.ShapedArray((1, 4), jnp.float32))])
    out = elementwise(g, "add", [DataTag((BCAST, channel)), ParamTag(((0, (0, 1)),))], (2, 4), fake)
    assert out.axes == (BCAST, channel)  # the (1, 4) operand's axis 0 broadcasts: no param varies along it
    assert g.members[0] == {(0, 1, 1, 0, 4, 0)}
    unbroadcast = elementwise(g, "add", [DataTag((BCAST, channel)), ParamTag(((0, (0, 1)),))], (2, 4))
    assert type(unbroadcast.axes[0]).__name__ == "Pending"  # without the shapes, axis 0 would vary with the param


def test_is_channel_and_bcast():
    assert is_channel(Chan((View(0, 1, 0),))) and not is_channel(BCAST) and not is_channel(None)
