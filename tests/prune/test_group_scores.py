"""Group importance: member sums over slices with blocks, segments and offsets; Taylor; random; input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.prune import ChannelGroup, Member, group_importance
from hamjax.prune.group_scores import checked_inputs

# Channel c of this group owns column c of "w", entry c of "b", rows 3*k + c of "v" (a channels-last flatten),
# and rows 2 + 2*j, 3 + 2*j of "u" for channel (j + 1) % 3 (a block of 2, in a segment from row 2, offset 1).
_GROUP = ChannelGroup(
    3,
    (
        Member("['b']", 0, 1, 0, 3, 0),
        Member("['u']", 0, 2, 2, 8, 1),
        Member("['v']", 0, 1, 0, 6, 0),
        Member("['w']", 1, 1, 0, 3, 0),
    ),
    True,
    "",
)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"w": (2, 3), "b": (3,), "v": (6, 4), "u": (9, 2), "other": (2, 2)}
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def _slices(p, c):
    """The numpy slices of channel ``c`` in every member of ``_GROUP``, written out by hand."""
    w, b, v, u = (np.asarray(p[k]) for k in "wbvu")
    j = (c - 1) % 3
    return [w[:, c], b[c : c + 1], v[c::3], u[2 + 2 * j : 4 + 2 * j]]


@pytest.mark.parametrize("method", ["l2", "l1"])
def test_norms_sum_over_members_and_their_blocks_segments_and_offsets(method):
    p = _params()
    norm = (lambda a: np.sqrt((a**2).sum())) if method == "l2" else (lambda a: np.abs(a).sum())
    expected = [sum(norm(s) for s in _slices(p, c)) for c in range(3)]
    np.testing.assert_allclose(group_importance(p, _GROUP, method), expected, rtol=1e-6)


def test_taylor_sums_weight_times_gradient_over_every_slice():
    p, g = _params(0), _params(1)
    expected = [sum(np.abs(a * b).sum() for a, b in zip(_slices(p, c), _slices(g, c), strict=True)) for c in range(3)]
    np.testing.assert_allclose(group_importance(p, _GROUP, "taylor", grads=g), expected, rtol=1e-6)


def test_taylor_of_a_real_gradient_ranks_the_channel_the_loss_needs():
    # Two hidden units with equal weights; only the first reaches the output, so only it has a gradient.
    p = {"w": jnp.ones((2, 2)), "v": jnp.array([[1.0], [0.0]])}
    group = ChannelGroup(2, (Member("['v']", 0, 1, 0, 2, 0), Member("['w']", 1, 1, 0, 2, 0)), True, "")
    grads = jax.grad(lambda q: jnp.sum(jnp.tanh(jnp.ones((1, 2)) @ q["w"]) @ q["v"]))(p)
    score = group_importance(p, group, "taylor", grads=grads)
    assert float(score[0]) > 0.0
    assert float(score[1]) == 0.0


def test_random_is_uniform_per_key_and_an_int_seed_is_a_key():
    p = _params()
    a = group_importance(p, _GROUP, "random", key=jax.random.key(3))
    assert a.shape == (3,) and a.dtype == jnp.float32
    assert bool(((a >= 0) & (a < 1)).all())
    np.testing.assert_array_equal(a, group_importance(p, _GROUP, "random", key=3))
    assert not np.array_equal(a, group_importance(p, _GROUP, "random", key=4))
    legacy = group_importance(p, _GROUP, "random", key=jax.random.PRNGKey(3))
    assert legacy.shape == (3,)


def test_random_vmaps_over_keys():
    keys = jax.random.split(jax.random.key(0), 4)
    scores = jax.vmap(lambda k: group_importance(_params(), _GROUP, "random", key=k))(keys)
    assert scores.shape == (4, 3) and len({tuple(r) for r in np.asarray(scores).tolist()}) == 4


@pytest.mark.parametrize(
    ("kw", "phrase"),
    [
        ({"method": "taylor"}, "demo: method='taylor' needs grads="),
        ({"method": "taylor", "grads": {"w": jnp.ones((2, 3))}}, "demo: grads has no leaf ['b']"),
        ({"method": "taylor", "grads": {**_params(), "v": jnp.ones((4, 6))}}, "demo: grads['v'] has shape (4, 6)"),
        ({"method": "random"}, "demo: method='random' needs key="),
        ({"method": "random", "key": "seven"}, "demo: key must be a jax.random key or an int seed"),
        ({"method": "random", "key": True}, "demo: key must be"),
    ],
)
def test_missing_or_mismatched_grads_and_keys_are_named(kw, phrase):
    with pytest.raises(ValueError) as info:
        checked_inputs("demo", _params(), [_GROUP], kw.pop("method"), **kw)
    assert phrase in str(info.value)


def test_groups_from_other_params_are_named():
    with pytest.raises(ValueError, match=r"params has no leaf \['x'\]"):
        group_importance({"w": jnp.ones((2, 3))}, _GROUP._replace(members=(Member("['x']", 0, 1, 0, 2, 0),)))
    with pytest.raises(ValueError, match=r"params\['u'\] has shape \(9, 2\), too small"):
        group_importance(_params(), _GROUP._replace(members=(Member("['u']", 0, 1, 0, 12, 0),)))
