"""Groups and physical shrink of models written here (tests/prune/any_models.py), not hamjax's.

For each model: the groups match a hand-written expectation, the shrunk
model equals the masked one, trains a step, and exports to ONNX.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hamjax
from hamjax import prune
from hamjax._base import trainable
from hamjax.train_steps import TrainState, make_train_step

from . import any_models


def _short(path):
    return "/".join(re.findall(r"\['([^']+)'\]", path))


def _members(group):
    """Members as ``(path, axis)`` where they cover the whole axis plainly, else the full tuple."""
    out = []
    for m in group.members:
        whole = (m.block, m.start, m.offset) == (1, 0, 0)
        out.append((_short(m.path), m.axis) if whole else (_short(m.path), m.axis, m.block, m.start, m.stop, m.offset))
    return sorted(out)


def _bn(name, *, stats=True):
    out = [(f"params/{name}/bias", 0), (f"params/{name}/scale", 0)]
    return out + ([(f"batch_stats/{name}/mean", 0), (f"batch_stats/{name}/var", 0)] if stats else [])


def _conv(name, *, bias=True):
    return [(f"params/{name}/kernel", 3)] + ([(f"params/{name}/bias", 0)] if bias else [])


def _dense(name):
    return [(f"params/{name}/kernel", 1), (f"params/{name}/bias", 0)]


def _qkv(blk, block, size=48):
    return [(f"{blk}/qkv", 1, block, 0, size, 0), (f"{blk}/qkv_b", 0, block, 0, size, 0)]


def _block(blk):
    heads = [*_qkv(blk, 4), (f"{blk}/wo", 0, 4, 0, 16, 0)]
    dims = [(f"{blk}/qkv", 1), (f"{blk}/qkv_b", 0), (f"{blk}/wo", 0)]
    return [
        (48, False, "split by a reshape", [(f"{blk}/qkv", 1), (f"{blk}/qkv_b", 0)]),
        (3, False, "squeeze", _qkv(blk, 16)),
        (4, True, "", heads),
        (4, True, "", dims),
        (32, True, "", [(f"{blk}/dn", 0), (f"{blk}/up", 1), (f"{blk}/up_b", 0)]),
    ]


_RESIDUAL = [
    (f"{b}/{k}", a) for b in ("blk0", "blk1") for k, a in [("dn", 1), ("g", 0), ("qkv", 0), ("up", 0), ("wo", 1)]
]

# (size, prunable, start of the reason, members) per group, in order of creation.
EXPECTED = {
    "resnet": [
        (8, True, "", [*_conv("stem"), *_bn("stem_bn"), ("params/b1_conv1/kernel", 2), *_conv("b1_conv2"), *_bn("b1_bn2"),
                       ("params/b2_conv1/kernel", 2), ("params/b2_proj/kernel", 2)]),
        (8, True, "", [*_conv("b1_conv1"), *_bn("b1_bn1"), ("params/b1_conv2/kernel", 2)]),
        (16, True, "", [*_conv("b2_conv1"), *_bn("b2_bn1"), ("params/b2_conv2/kernel", 2)]),
        (16, True, "", [*_conv("b2_conv2"), *_bn("b2_bn2"), *_conv("b2_proj"), ("params/head/kernel", 0)]),
        (3, False, "model output", _dense("head")),
    ],
    "transformer": [
        (16, False, "reduce_sum over a channel axis", [*_RESIDUAL, ("out", 0), ("pos", 1), ("tok", 1)]),
        *_block("blk0"),
        *_block("blk1"),
        (3, False, "model output", [("out", 1)]),
    ],
    "norm_mlp": [
        (8, True, "", [*_dense("a"), ("params/b/kernel", 0)]),
        (6, False, "reduce_sum over a channel axis", [*_dense("b"), *_bn("norm", stats=False), ("params/out/kernel", 0)]),
        (3, False, "model output", _dense("out")),
    ],
    "concat_mlp": [
        (6, True, "", [*_dense("left"), ("params/mix/kernel", 0, 1, 0, 6, 0)]),
        (4, True, "", [*_dense("right"), ("params/mix/kernel", 0, 1, 11, 15, 0)]),  # x itself is rows 6..10
        (8, True, "", [*_dense("mix"), ("params/head/kernel", 0)]),
        (3, False, "model output", _dense("head")),
    ],
    "separable_cnn": [
        (6, True, "", [*_conv("expand"), ("params/depthwise/bias", 0, 2, 0, 12, 0),
                       ("params/depthwise/kernel", 3, 2, 0, 12, 0), ("params/project/kernel", 2, 2, 0, 12, 0)]),
        (8, True, "", [*_conv("project"), ("params/head/kernel", 0)]),
        (3, False, "model output", _dense("head")),
    ],
}  # fmt: skip


def _normalise(members):
    return sorted(m if len(m) == 2 or m[1:] != (m[1], 1, 0, m[4], 0) else m[:2] for m in members)


@pytest.fixture(scope="module", params=sorted(any_models.BUILDERS))
def model(request):
    apply_fn, params, x = any_models.BUILDERS[request.param]()
    groups = prune.channel_groups(apply_fn, params, x)
    masks = prune.group_masks(params, groups, 0.5)
    shrunk, small = prune.shrink_groups(apply_fn, params, x, groups, masks)
    return request.param, apply_fn, params, x, groups, masks, shrunk, small


def test_groups_match_the_hand_written_expectation(model):
    name, _, _, _, groups, *_ = model
    got = [(g.size, g.prunable, g.reason, _members(g)) for g in groups]
    expected = EXPECTED[name]
    assert [(n, p) for n, p, _, _ in got] == [(n, p) for n, p, _, _ in expected]
    for (_, _, reason, members), (_, _, why, want) in zip(got, expected, strict=True):
        assert reason.startswith(why), (reason, why)
        assert members == _normalise(want)


def test_shrunk_equals_masked_and_is_smaller(model):
    _, apply_fn, params, x, _, masks, shrunk, small = model
    masked = hamjax.call_model(apply_fn, prune.apply_masks(params, masks), x)[0]
    y = jax.jit(shrunk)(small, x)
    scale = float(jnp.max(jnp.abs(masked)))
    np.testing.assert_allclose(np.asarray(y), np.asarray(masked), rtol=1e-5, atol=1e-5 * scale)
    size = sum(int(np.size(a)) for a in jax.tree.leaves(small))
    assert size < 0.7 * sum(int(np.size(a)) for a in jax.tree.leaves(params))
    y_big_batch = jax.jit(shrunk)(small, jnp.concatenate([x, x, x]))  # any batch size
    np.testing.assert_allclose(np.asarray(y_big_batch[: x.shape[0]]), np.asarray(y), rtol=1e-6, atol=1e-6 * scale)


def test_a_finetune_step_runs_on_the_shrunk_model(model):
    _, _, _, x, _, _, shrunk, small = model
    opt = optax.sgd(0.05)
    step = make_train_step(shrunk, opt)
    before = trainable(shrunk, small)
    state = TrainState(
        jax.tree.map(jnp.copy, small), opt.init(before), jnp.asarray(0, jnp.int32)
    )  # the step donates it
    labels = jnp.arange(x.shape[0], dtype=jnp.int32) % 3
    new, metrics = step(state, x, labels)
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), trainable(shrunk, new.params), before)
    assert any(jax.tree.leaves(changed))
    assert jax.tree.map(jnp.shape, new.params) == jax.tree.map(jnp.shape, small)


@pytest.mark.slow
def test_the_shrunk_model_exports_to_onnx(model, tmp_path):
    pytest.importorskip("onnxruntime")
    name, _, _, x, _, _, shrunk, small = model
    result = hamjax.export.onnx(shrunk, small, x[:1], tmp_path / f"{name}.onnx", check_data=x)
    assert all(check.max_relative_error <= 1e-4 for check in result.checks)


def test_train_mode_updates_the_shrunk_batch_statistics():
    apply_fn, params, x = any_models.resnet()
    groups = prune.channel_groups(apply_fn, params, x)
    masks = prune.group_masks(params, groups, 0.5)
    shrunk, small = prune.shrink_groups(apply_fn, params, x, groups, masks)
    key = jax.random.key(0)
    y_masked, new_masked = apply_fn(prune.apply_masks(params, masks), x, train=True, rng=key, mutable=True)
    y, new = jax.jit(lambda v, xx: shrunk(v, xx, train=True, rng=key, mutable=["batch_stats"]))(small, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_masked), rtol=1e-5, atol=1e-5)
    kept = np.asarray(masks["batch_stats"]["stem_bn"]["mean"])
    np.testing.assert_allclose(
        new["batch_stats"]["stem_bn"]["mean"], new_masked["batch_stats"]["stem_bn"]["mean"][kept], rtol=1e-5, atol=1e-6
    )


def test_dropout_masks_are_cut_to_the_kept_channels():
    import flax.linen as nn

    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(16)(x))))

    x = jnp.ones((4, 5))
    apply_fn, variables = hamjax.linen_functional(Drop(), Drop().init(jax.random.key(0), x))
    groups = prune.channel_groups(apply_fn, variables, x)
    masks = prune.group_masks(variables, groups, 0.5)
    shrunk, small = prune.shrink_groups(apply_fn, variables, x, groups, masks)
    key = jax.random.key(1)
    masked = apply_fn(prune.apply_masks(variables, masks), x, train=True, rng=key)
    np.testing.assert_allclose(shrunk(small, x, train=True, rng=key), masked, rtol=1e-6, atol=1e-6)


def test_keep_tuples_and_bad_keeps():
    apply_fn, params, x = any_models.concat_mlp()
    groups = prune.channel_groups(apply_fn, params, x)
    keep = [None] * len(groups)
    keep[1] = np.array([True, False, True, False])
    _, small = prune.shrink_groups(apply_fn, params, x, groups, tuple(keep))
    assert small["params"]["mix"]["kernel"].shape == (13, 8)
    assert small["params"]["right"]["kernel"].shape == (5, 2)
    keep[1] = np.zeros(4, bool)
    with pytest.raises(ValueError, match="removes every channel"):
        prune.shrink_groups(apply_fn, params, x, groups, tuple(keep))
    keep[1] = None
    keep[3] = np.array([True, False, True])
    with pytest.raises(ValueError, match="not prunable"):
        prune.shrink_groups(apply_fn, params, x, groups, tuple(keep))
    with pytest.raises(ValueError, match="one per group"):
        prune.shrink_groups(apply_fn, params, x, groups, (None,))


def test_train_mode_groups_match_eval_mode_groups():
    apply_fn, params, x = any_models.resnet()
    train = prune.channel_groups(apply_fn, params, x, train=True)
    evaluate = prune.channel_groups(apply_fn, params, x)
    assert [(g.size, g.members, g.prunable) for g in train] == [(g.size, g.members, g.prunable) for g in evaluate]
