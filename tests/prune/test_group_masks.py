"""Group importance and masks: sums over members, blocks, counts, rounding, traced sparsity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.prune import ChannelGroup, group_importance, group_masks

# Channel c of this group owns column c of "w", entry c of "b" and rows 3*k + c of "v" (a channels-last flatten).
_GROUP = ChannelGroup(3, (("['b']", 0, 1), ("['v']", 0, 1), ("['w']", 1, 1)), True, "")


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        "v": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
        "other": jnp.ones((2, 2)),
    }


@pytest.mark.parametrize("method", ["l2", "l1"])
def test_importance_sums_member_norms(method):
    p = _params()
    norm = (lambda a: np.sqrt((a**2).sum())) if method == "l2" else (lambda a: np.abs(a).sum())
    w, b, v = (np.asarray(p[k]) for k in "wbv")
    expected = [norm(w[:, c]) + norm(b[c : c + 1]) + norm(v[c::3]) for c in range(3)]
    np.testing.assert_allclose(group_importance(p, _GROUP, method), expected, rtol=1e-6)


def test_masks_remove_the_least_important_channel_everywhere():
    p = _params()
    weakest = int(np.argmin(np.asarray(group_importance(p, _GROUP))))
    masks = group_masks(p, [_GROUP], 0.4)  # floor(0.4 * 3) = 1 channel
    assert masks["other"] is None
    assert np.flatnonzero(~np.asarray(masks["b"])).tolist() == [weakest]
    assert (~np.asarray(masks["w"])).all(axis=0).tolist() == [c == weakest for c in range(3)]
    assert np.flatnonzero(~np.asarray(masks["v"]).any(axis=1)).tolist() == [weakest, weakest + 3]


def test_at_least_one_channel_is_kept_and_unprunable_groups_are_left_whole():
    p = _params()
    assert int(group_masks(p, [_GROUP], 0.99)["b"].sum()) == 1
    assert group_masks(p, [_GROUP._replace(prunable=False, reason="x")], 0.5)["b"] is None


def test_multiple_rounds_up_only_where_the_group_is_large_enough():
    p = _params()
    assert int(group_masks(p, [_GROUP], 0.5, multiple=2)["b"].sum()) == 2  # 2 kept already
    assert int(group_masks(p, [_GROUP], 0.7, multiple=2)["b"].sum()) == 2  # 1 kept, rounded up to 2
    assert int(group_masks(p, [_GROUP], 0.7, multiple=4)["b"].sum()) == 1  # 4 > 3 channels: not rounded


def test_sparsity_may_be_traced():
    p = _params()
    kept = jax.jit(jax.vmap(lambda s: group_masks(p, [_GROUP], s)["b"].sum()))(jnp.array([0.0, 0.4, 0.7]))
    assert kept.tolist() == [3, 2, 1]
