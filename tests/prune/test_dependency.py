"""Channel groups from the jaxpr: hand-written expectations, and masked == channels removed by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hamjax
from hamjax.prune import ChannelGroup, Member, apply_masks, channel_groups, group_masks

from . import any_models


def _brief(groups):
    """Groups with ``(path, axis, block)`` members, for members that cover their whole axis without offset."""
    out = []
    for g in groups:
        for m in g.members:
            assert (m.start, m.offset) == (0, 0), m
        out.append(g._replace(members=tuple((m.path, m.axis, m.block) for m in g.members)))
    return tuple(out)


_randomize = any_models.randomize


def _slice(params, group, kept):
    """``params`` with only the ``kept`` channels of ``group`` along every member slice."""
    members = {(path, axis): block for path, axis, block, *_ in group.members}

    def cut(path, a):
        for (p, axis), block in members.items():
            if p == jax.tree_util.keystr(path):
                keep = np.isin((np.arange(a.shape[axis]) // block) % group.size, kept)
                a = jnp.compress(keep, a, axis=axis)
        return a

    return jax.tree_util.tree_map_with_path(cut, params)


def _check_masked_equals_removed(apply_fn, params, x, group, smaller_fn, sparsity=0.5):
    """Masks of ``group`` zero whole member slices, and the masked model equals ``smaller_fn`` on sliced params."""
    masks = group_masks(params, [group], sparsity)
    channel = None
    for path, axis, block, *_ in group.members:
        m = next(mk for p, mk in jax.tree_util.tree_flatten_with_path(masks)[0] if jax.tree_util.keystr(p) == path)
        rest = int(np.prod(m.shape)) // m.shape[axis]
        units = np.moveaxis(np.asarray(m), axis, 0).reshape(-1, group.size, block, rest)
        per, anyk = units.all(axis=(0, 2, 3)), units.any(axis=(0, 2, 3))
        assert np.array_equal(per, anyk), f"{path}: a channel is masked only in part"
        channel = per if channel is None else channel
        assert np.array_equal(per, channel), f"{path}: members disagree on the removed channels"
    assert int((~channel).sum()) == int(np.floor(sparsity * group.size))
    kept = np.flatnonzero(channel)
    masked = hamjax.call_model(apply_fn, apply_masks(params, masks), x)[0]
    removed = smaller_fn(_slice(params, group, kept), len(kept))
    np.testing.assert_allclose(np.asarray(masked), np.asarray(removed), atol=1e-5, rtol=1e-5)


# A plain jnp MLP whose names say nothing ("mat", "shift").
def _mlp(p, x):
    h = jnp.tanh(x @ p["enc"]["mat"] + p["enc"]["shift"][None])
    h = jax.nn.relu(h @ p["mid"]["mat"] + p["mid"]["shift"][None])
    return h @ p["head"]["mat"] + p["head"]["shift"][None]


@pytest.fixture(scope="module")
def mlp():
    shapes = {"enc": {"mat": (5, 8), "shift": (8,)}, "mid": {"mat": (8, 6), "shift": (6,)}}
    shapes["head"] = {"mat": (6, 3), "shift": (3,)}
    params = _randomize(jax.tree.map(jnp.zeros, shapes, is_leaf=lambda s: isinstance(s, tuple)))
    return params, jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)


def test_plain_mlp_groups(mlp):
    params, x = mlp
    assert _brief(channel_groups(_mlp, params, x)) == (
        ChannelGroup(8, (("['enc']['mat']", 1, 1), ("['enc']['shift']", 0, 1), ("['mid']['mat']", 0, 1)), True, ""),
        ChannelGroup(6, (("['head']['mat']", 0, 1), ("['mid']['mat']", 1, 1), ("['mid']['shift']", 0, 1)), True, ""),
        ChannelGroup(3, (("['head']['mat']", 1, 1), ("['head']['shift']", 0, 1)), False, "model output"),
    )


@pytest.mark.parametrize("index", [0, 1])
def test_plain_mlp_masked_equals_smaller_arrays(mlp, index):
    params, x = mlp
    group = channel_groups(_mlp, params, x)[index]
    _check_masked_equals_removed(_mlp, params, x, group, lambda p, k: _mlp(p, x))


def test_rounding_to_a_multiple_keeps_more(mlp):
    params, x = mlp
    groups = channel_groups(_mlp, params, x)
    masks = group_masks(params, groups, 0.7, multiple=4)
    assert int(masks["enc"]["shift"].sum()) == 4  # 8 - floor(5.6) = 3 kept, rounded up to 4
    assert int(masks["mid"]["shift"].sum()) == 4  # 6 - 4 = 2 kept, rounded up to 4
    assert masks["head"]["shift"] is None  # the output group is never masked


def test_concatenate_gives_each_branch_its_rows_of_the_consumer():
    params = {"a": jnp.ones((3, 4)), "b": jnp.ones((3, 5)), "c": jnp.ones((9, 2))}
    groups = channel_groups(
        lambda p, x: jnp.concatenate([x @ p["a"], x @ p["b"]], -1) @ p["c"], params, jnp.ones((1, 3))
    )
    assert [(g.size, g.prunable) for g in groups] == [(4, True), (5, True), (2, False)]
    assert groups[0].members == (Member("['a']", 1, 1, 0, 4, 0), Member("['c']", 0, 1, 0, 4, 0))
    assert groups[1].members == (Member("['b']", 1, 1, 0, 5, 0), Member("['c']", 0, 1, 4, 9, 0))
    masks = group_masks(params, groups, 0.5)
    assert masks["c"][:, 0].tolist().count(False) == 2 + 2


class _ResCNN(nn.Module):
    width: int = 8
    mid: int = 8
    last: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        def bn():
            return nn.BatchNorm(use_running_average=not train)

        h = nn.relu(bn()(nn.Conv(self.width, (3, 3))(x)))
        r = nn.relu(bn()(nn.Conv(self.mid, (3, 3))(h)))
        h = nn.relu(h + bn()(nn.Conv(self.width, (3, 3))(r)))
        z = nn.relu(nn.Conv(self.last, (3, 3), strides=2)(h))
        return nn.Dense(3)(z.reshape((z.shape[0], -1))) + nn.Dense(3)(h.mean(axis=(1, 2)))


def _linen(module, x):
    return hamjax.linen_functional(module, module.init(jax.random.key(0), x))


@pytest.fixture(scope="module")
def cnn():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 6, 1)), jnp.float32)
    apply_fn, variables = _linen(_ResCNN(), x)
    return apply_fn, _randomize(variables), x


def _bn(i):
    return [(f"['{c}']['BatchNorm_{i}']['{k}']", 0, 1) for c, k in [("params", "scale"), ("params", "bias")]] + [
        (f"['batch_stats']['BatchNorm_{i}']['{k}']", 0, 1) for k in ("mean", "var")
    ]


def _p(name, leaf, axis, block=1):
    return (f"['params']['{name}']['{leaf}']", axis, block)


def test_linen_cnn_groups(cnn):
    apply_fn, variables, x = cnn
    first = [_p("Conv_0", "kernel", 3), _p("Conv_0", "bias", 0), *_bn(0), _p("Conv_1", "kernel", 2)]
    first += [_p("Conv_2", "kernel", 3), _p("Conv_2", "bias", 0), *_bn(2), _p("Conv_3", "kernel", 2)]
    out = [_p(d, "kernel", 1) for d in ("Dense_0", "Dense_1")] + [_p(d, "bias", 0) for d in ("Dense_0", "Dense_1")]
    expected = [
        (8, [*first, _p("Dense_1", "kernel", 0)], True),
        (8, [_p("Conv_1", "kernel", 3), _p("Conv_1", "bias", 0), *_bn(1), _p("Conv_2", "kernel", 2)], True),
        (4, [_p("Conv_3", "kernel", 3), _p("Conv_3", "bias", 0), _p("Dense_0", "kernel", 0, 1)], True),
        (3, out, False),
    ]
    got = _brief(channel_groups(apply_fn, variables, x))
    assert [(g.size, sorted(g.members), g.prunable) for g in got] == [(n, sorted(m), p) for n, m, p in expected]
    assert got[3].reason == "model output"


@pytest.mark.parametrize(("index", "field"), [(0, "width"), (1, "mid"), (2, "last")])
def test_linen_cnn_masked_equals_smaller_model(cnn, index, field):
    apply_fn, variables, x = cnn
    group = channel_groups(apply_fn, variables, x)[index]

    def smaller(v, k):
        return _linen(_ResCNN(**{field: k}), x)[0](v, x, train=False)

    _check_masked_equals_removed(apply_fn, variables, x, group, smaller)


_NormMLP = any_models.NormMLP


@pytest.fixture(scope="module")
def norm_mlp():
    apply_fn, variables = hamjax.functional(_NormMLP(rngs=nnx.Rngs(0)))
    return apply_fn, _randomize(variables), jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)), jnp.float32)


def test_nnx_layernorm_groups(norm_mlp):
    apply_fn, variables, x = norm_mlp
    got = _brief(channel_groups(apply_fn, variables, x))
    norm_width = [_p("b", "kernel", 1), _p("b", "bias", 0), _p("norm", "scale", 0), _p("norm", "bias", 0)]
    assert [(g.size, sorted(g.members), g.prunable) for g in got] == [
        (8, sorted([_p("a", "kernel", 1), _p("a", "bias", 0), _p("b", "kernel", 0)]), True),
        (6, sorted([*norm_width, _p("out", "kernel", 0)]), False),
        (3, sorted([_p("out", "kernel", 1), _p("out", "bias", 0)]), False),
    ]
    assert "reduce_sum over a channel axis" in got[1].reason  # layer norm's mean couples every feature


def test_nnx_masked_equals_smaller_model(norm_mlp):
    apply_fn, variables, x = norm_mlp
    group = channel_groups(apply_fn, variables, x)[0]

    def smaller(v, k):
        return hamjax.functional(_NormMLP(hidden=k, rngs=nnx.Rngs(0)))[0](v, x, train=False)

    _check_masked_equals_removed(apply_fn, variables, x, group, smaller)


def test_channels_first_flatten_gives_blocks():
    params = {"k": jnp.ones((3, 1, 3, 3)), "d": jnp.ones((3 * 16, 2))}

    def f(p, x):
        y = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y.reshape((y.shape[0], -1)) @ p["d"]

    (conv, out) = _brief(channel_groups(f, params, jnp.ones((2, 1, 4, 4))))
    assert conv == ChannelGroup(3, (("['d']", 0, 16), ("['k']", 0, 1)), True, "")
    assert not out.prunable


def test_no_weighted_op_raises():
    with pytest.raises(ValueError, match="channel_groups"):
        channel_groups(lambda p, x: x * p["s"][None], {"s": jnp.ones(3)}, jnp.ones((1, 3)))


def test_max_pooling_and_a_split_pass_channels():
    params = {"k": jnp.ones((3, 3, 1, 4)), "d": jnp.ones((4, 2))}

    def pooled(p, x):
        y = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return y.mean(axis=(1, 2)) @ p["d"]

    def split(p, x):
        return jnp.split(pooled(p, x), 2, axis=-1)[0]

    x = jnp.ones((2, 4, 4, 1))
    assert _brief(channel_groups(pooled, params, x))[0] == ChannelGroup(4, (("['d']", 0, 1), ("['k']", 3, 1)), True, "")
    out = channel_groups(split, params, x)[1]
    assert not out.prunable
    assert out.reason == "model output"  # the split only takes the first half of the output channels


def test_a_log_or_a_division_by_a_channel_is_not_followed():
    params = {"w": jnp.ones((3, 4)), "s": jnp.ones(4), "v": jnp.ones((4, 2))}
    x = jnp.ones((1, 3))
    divided = channel_groups(lambda p, x: (x @ p["w"] / p["s"][None]) @ p["v"], params, x)[0]
    logged = channel_groups(lambda p, x: jnp.log(x @ p["w"]) @ p["v"], params, x)[0]
    scaled = channel_groups(lambda p, x: (x @ p["w"] / 2.0) @ p["v"], params, x)[0]
    assert "div of a channel" in divided.reason and "log of a channel" in logged.reason
    assert scaled.prunable


def test_a_param_added_to_the_input_does_not_hide_the_input():
    params = {"pos": jnp.ones((1, 4)), "a": jnp.ones((4, 4)), "v": jnp.ones((4, 2))}
    groups = channel_groups(lambda p, x: ((x + p["pos"]) + x @ p["a"]) @ p["v"], params, jnp.ones((2, 4)))
    assert not groups[0].prunable
    assert "not a channel" in groups[0].reason
