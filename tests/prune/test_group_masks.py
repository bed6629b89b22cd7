"""Kept channels and masks of channel groups: layer and global scope, rounding, methods, traced sparsity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax.prune import ChannelGroup, Member, channel_groups, group_channels, group_importance, group_masks

# Channel c of this group owns column c of "w", entry c of "b" and rows 3*k + c of "v" (a channels-last flatten).
_GROUP = ChannelGroup(
    3, (Member("['b']", 0, 1, 0, 3, 0), Member("['v']", 0, 1, 0, 6, 0), Member("['w']", 1, 1, 0, 3, 0)), True, ""
)


def _params():
    rng = np.random.default_rng(0)
    shapes = {"w": (2, 3), "b": (3,), "v": (6, 4), "other": (2, 2)}
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def _row(path, n):
    """A one-member group over the columns of a ``(1, n)`` leaf: its L1 importance is the row itself."""
    return ChannelGroup(n, (Member(path, 1, 1, 0, n, 0),), True, "")


# Importances [1, 2, 3, 6] (mean 3) and [100, 300] (mean 200): a narrow group of large weights.
_ROWS = {"a": jnp.array([[1.0, 2.0, 3.0, 6.0]]), "b": jnp.array([[100.0, 300.0]])}
_ROW_GROUPS = (_row("['a']", 4), _row("['b']", 2))


def _mlp(p, x):
    h = jnp.tanh(x @ p["enc"]["mat"] + p["enc"]["shift"][None])
    h = jax.nn.relu(h @ p["mid"]["mat"] + p["mid"]["shift"][None])
    return h @ p["head"]["mat"]


@pytest.fixture(scope="module")
def mlp():
    """A plain jnp MLP 5-8-6-3 whose names say nothing, its groups (8, 6 prunable; the output not) and an input."""
    rng = np.random.default_rng(1)
    shapes = {"enc": {"mat": (5, 8), "shift": (8,)}, "mid": {"mat": (8, 6), "shift": (6,)}, "head": {"mat": (6, 3)}}
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    return params, channel_groups(_mlp, params, x), x


def test_masks_remove_the_least_important_channel_in_every_member():
    p = _params()
    weakest = int(np.argmin(np.asarray(group_importance(p, _GROUP))))
    masks = group_masks(p, [_GROUP], 0.4)  # floor(0.4 * 3) = 1 channel
    assert masks["other"] is None
    assert np.flatnonzero(~np.asarray(masks["b"])).tolist() == [weakest]
    assert (~np.asarray(masks["w"])).all(axis=0).tolist() == [c == weakest for c in range(3)]
    assert np.flatnonzero(~np.asarray(masks["v"]).any(axis=1)).tolist() == [weakest, weakest + 3]


def test_channels_are_none_for_unprunable_groups_and_masks_follow_them(mlp):
    params, groups, _ = mlp
    assert [(g.size, g.prunable) for g in groups] == [(8, True), (6, True), (3, False)]
    keep = group_channels(params, groups, 0.5)
    assert keep[2] is None
    assert [(k.shape, k.dtype, int(k.sum())) for k in keep[:2]] == [((8,), jnp.bool_, 4), ((6,), jnp.bool_, 3)]
    masks = group_masks(params, groups, 0.5)
    assert masks["enc"]["shift"].tolist() == keep[0].tolist()
    assert masks["mid"]["mat"].any(axis=1).tolist() == keep[0].tolist()  # rows: the inputs from group 0
    assert masks["mid"]["mat"].any(axis=0).tolist() == keep[1].tolist()  # columns: group 1's outputs
    assert masks["head"]["mat"].all(axis=1).tolist() == keep[1].tolist()


def test_layer_scope_keeps_the_most_important_channels_of_each_group():
    keep = group_channels(_ROWS, _ROW_GROUPS, 0.5, method="l1")
    assert [k.tolist() for k in keep] == [[False, False, True, True], [False, True]]


def test_global_scope_ranks_importances_divided_by_each_groups_mean():
    # Normalised: a = [1/3, 2/3, 1, 2], b = [0.5, 1.5]; 3 of 6 go: a0, b0, a1. Raw values would take a0, a1, a2.
    keep = group_channels(_ROWS, _ROW_GROUPS, 0.5, method="l1", scope="global")
    assert [k.tolist() for k in keep] == [[False, False, True, True], [False, True]]
    keep = group_channels(_ROWS, _ROW_GROUPS, 0.34, method="l1", scope="global")  # floor(2.04) = 2: a0, b0
    assert [k.tolist() for k in keep] == [[False, True, True, True], [False, True]]


def test_global_sparsity_counts_all_prunable_channels(mlp):
    params, groups, _ = mlp
    for sparsity in (0.0, 0.3, 0.5, 0.8):
        keep = group_channels(params, groups, sparsity, scope="global")
        assert sum(int((~k).sum()) for k in keep[:2]) == int(np.floor(sparsity * 14))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_every_prunable_group_keeps_one_channel(scope):
    keep = group_channels(_ROWS, _ROW_GROUPS, 0.99, method="l1", scope=scope)
    assert [k.tolist() for k in keep] == [[False, False, False, True], [False, True]]
    assert int(group_masks(_params(), [_GROUP], 0.99, scope=scope)["b"].sum()) == 1


def test_multiple_rounds_the_kept_count_up_and_stops_at_the_group_size(mlp):
    params, groups, _ = mlp
    kept = lambda s, m: [int(k.sum()) for k in group_channels(params, groups, s, multiple=m)[:2]]  # noqa: E731
    assert kept(0.5, 1) == [4, 3]
    assert kept(0.5, 4) == [4, 4]  # 3 kept rounded up to 4
    assert kept(0.7, 4) == [4, 4]  # 8 - 5 = 3 and 6 - 4 = 2, both rounded up to 4
    assert kept(0.2, 4) == [8, 6]  # 7 and 5 round up to 8 and 8; 8 > 6 channels: the group stays whole
    assert kept(0.5, 6) == [6, 6]
    keep = group_channels(params, groups, 0.5, scope="global", multiple=4)  # 7 of 14 go before rounding
    assert all(int(k.sum()) % 4 == 0 or int(k.sum()) == k.shape[0] for k in keep[:2])


def test_multiple_larger_than_a_group_names_the_group(mlp):
    params, groups, _ = mlp
    with pytest.raises(ValueError, match=r"group_channels: multiple=7 is larger than the group of \['head'\]\['mat'\]"):
        group_channels(params, groups, 0.5, multiple=7)
    whole = (groups[0], groups[1]._replace(prunable=False, reason="left whole"), groups[2])
    assert int(group_channels(params, whole, 0.5, multiple=8)[0].sum()) == 8


def test_groups_with_nothing_prunable_name_the_reasons(mlp):
    params, groups, _ = mlp
    with pytest.raises(ValueError, match=r"group_masks: no prunable group; reasons: model output$"):
        group_masks(params, groups[2:], 0.5)
    with pytest.raises(ValueError, match=r"no prunable group; reasons: groups is empty"):
        group_channels(params, (), 0.5)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_may_be_traced_under_vmap_and_jit(mlp, scope):
    params, groups, _ = mlp
    sparsities = jnp.array([0.0, 0.3, 0.5, 0.9])
    batched = jax.jit(jax.vmap(lambda s: group_channels(params, groups, s, scope=scope, multiple=2)[:2]))(sparsities)
    for i, s in enumerate(sparsities.tolist()):
        one = group_channels(params, groups, s, scope=scope, multiple=2)
        for got, want in zip(batched, one[:2], strict=True):
            assert got[i].tolist() == want.tolist()
    masks = jax.vmap(lambda s: group_masks(params, groups, s, scope=scope)["enc"]["mat"])(sparsities)
    assert masks.shape == (4, 5, 8)


def test_taylor_keeps_the_channels_with_the_largest_weight_times_gradient(mlp):
    params, groups, x = mlp
    grads = jax.grad(lambda p: jnp.sum(_mlp(p, x) ** 2))(params)
    keep = group_channels(params, groups, 0.5, method="taylor", grads=grads)
    for g, k in zip(groups[:2], keep[:2], strict=True):
        score = np.asarray(group_importance(params, g, "taylor", grads=grads))
        assert sorted(np.flatnonzero(k).tolist()) == sorted(np.argsort(score)[-int(k.sum()) :].tolist())
    assert keep[0].tolist() != group_channels(params, groups, 0.5)[0].tolist()  # not the L2 choice here


class _BnMlp(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(nn.Dense(6, name="fc")(x)))
        return nn.Dense(3, name="out")(h)


def test_taylor_on_a_linen_model_with_batch_statistics():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5)), jnp.float32)
    apply_fn, variables = hamjax.linen_functional(_BnMlp(), _BnMlp().init(jax.random.key(0), x))
    groups = channel_groups(apply_fn, variables, x)
    grads = jax.grad(lambda v: jnp.sum(hamjax.call_model(apply_fn, v, x)[0] ** 2))(variables)
    masks = group_masks(variables, groups, 0.5, method="taylor", grads=grads)
    keep = group_channels(variables, groups, 0.5, method="taylor", grads=grads)[0]
    assert int(keep.sum()) == 3
    assert masks["batch_stats"]["bn"]["var"].tolist() == keep.tolist()
    assert masks["params"]["out"]["kernel"].all(axis=1).tolist() == keep.tolist()
    with pytest.raises(ValueError, match=r"grads has no leaf \['batch_stats'\]"):
        group_channels(variables, groups, 0.5, method="taylor", grads={"params": grads["params"]})


def test_random_baseline_depends_on_the_key_only(mlp):
    params, groups, _ = mlp
    draw = lambda key: group_channels(params, groups, 0.5, method="random", key=key)[0].tolist()  # noqa: E731
    assert draw(0) == draw(jax.random.key(0))
    assert len({tuple(draw(k)) for k in range(6)}) > 1
    assert sum(draw(0)) == 4
