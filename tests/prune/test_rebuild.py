"""Shrink: the smaller model computes what the masked model computes, with exactly the removed parameters gone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_models import random_model

import hamjax
from hamjax.models import MLPConfig
from hamjax.prune import GRANULARITIES, ShrunkConfig, apply_masks, build_shrunk, shrink, shrunk_model, structured_masks


def _both(a, b):
    """Combine two mask trees with ``&`` (``None`` keeps everything)."""
    return jax.tree.map(lambda x, y: y if x is None else (x if y is None else x & y), a, b, is_leaf=lambda x: x is None)


def _all_masks(config, variables, s):
    base = config.base if isinstance(config, ShrunkConfig) else config
    masks = [structured_masks(config, variables, s, granularity=g) for g in GRANULARITIES[type(base)]]
    return masks[0] if len(masks) == 1 else _both(*masks)


def _count(tree):
    return sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(tree))


MODELS = [
    ("mlp", {"input_shape": (8, 8, 1)}),
    ("cnn", {"input_shape": (28, 28, 1)}),
    ("cnn", {"input_shape": (8, 8, 1)}),
    ("vit", {"input_shape": (8, 8, 1), "hidden_size": 32}),
    ("hamnet", {"input_shape": (8, 8, 1), "hidden_size": 32}),
]


@pytest.mark.parametrize(("name", "kw"), MODELS, ids=[f"{n}-{kw['input_shape'][0]}" for n, kw in MODELS])
def test_shrunk_model_equals_masked_model(name, kw):
    apply_fn, config, variables = random_model(name, **kw)
    x = jax.random.normal(jax.random.key(1), (6, *kw["input_shape"]))
    forward = jax.jit(apply_fn)
    for s in (0.25, 0.5):
        masks = _all_masks(config, variables, s)
        masked = forward(apply_masks(variables, masks), x)
        small_fn, small = shrunk_model(config, variables, masks)
        out = jax.jit(small_fn)(small, x)
        np.testing.assert_allclose(out, masked, rtol=1e-5, atol=1e-5 * float(jnp.abs(masked).max()))
        assert not np.allclose(masked, forward(variables, x), atol=1e-3)  # the masks did remove something
        assert _count(small) < _count(variables)
        assert jax.tree.map(lambda a: a.dtype, small) == jax.tree.map(lambda a: a.dtype, variables)
    new_config, same = shrink(config, variables, _all_masks(config, variables, 0.0))
    assert new_config == config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), same, variables))


def test_shrunk_parameter_counts_are_hand_computed():
    _, config, variables = random_model("mlp", input_shape=(8, 8, 1))
    new_config, small = shrink(config, variables, _all_masks(config, variables, 0.5))
    assert new_config.sizes == (64, 256, 256, 10)
    assert _count(small) == (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)

    _, config, variables = random_model("cnn", input_shape=(8, 8, 1))
    new_config, small = shrink(config, variables, _all_masks(config, variables, 0.5))
    assert (new_config.channels, new_config.dense) == ((3, 8), (60, 42))
    conv = (25 * 1 * 3 + 3) + (25 * 3 * 8 + 8)
    norms = 2 * (3 + 8)
    dense = (2 * 2 * 8 * 60 + 60) + (60 * 42 + 42) + (42 * 10 + 10)
    assert _count(small["params"]) == conv + norms + dense
    assert _count(small["batch_stats"]) == norms

    _, config, variables = random_model("vit", input_shape=(8, 8, 1), hidden_size=32, num_heads=4)
    new_config, small = shrink(config, variables, structured_masks(config, variables, 0.5, granularity="heads"))
    assert new_config == ShrunkConfig(config, heads=(2, 2), mlp_hidden=(64, 64), token_hidden=(0, 0))
    removed_per_layer = 3 * (32 * 16 + 16) + 16 * 32
    assert _count(variables) - _count(small) == 2 * removed_per_layer
    assert small["params"]["blocks"][0]["attn"]["out"]["kernel"].shape == (16, 32)
    assert _count(hamjax.functional(nnx.eval_shape(lambda: build_shrunk(new_config)))[1]) == _count(small)


def test_flattened_channels_drop_the_matching_dense_rows():
    _, config, variables = random_model("cnn", input_shape=(8, 8, 1), channels=(4, 5), dense=())
    masks = structured_masks(config, variables, 0.5, granularity="channels")
    kept = np.flatnonzero(np.asarray(masks["params"]["convs"][1]["bias"]))
    _, small = shrink(config, variables, masks)
    head = np.asarray(variables["params"]["head"]["kernel"]).reshape(2, 2, 5, 10)  # (H, W, C, classes)
    np.testing.assert_array_equal(small["params"]["head"]["kernel"], head[:, :, kept].reshape(-1, 10))


def test_shrinking_a_shrunk_transformer_again():
    _, config, variables = random_model("hamnet", input_shape=(8, 8, 1), hidden_size=32)
    first, small = shrink(config, variables, _all_masks(config, variables, 0.25))
    assert first.heads == (3, 0, 3, 0) and first.token_hidden == (0, 12, 0, 12) and first.mlp_hidden == (48,) * 4
    second_masks = _all_masks(first, small, 0.5)
    small_fn, smaller = shrunk_model(first, small, second_masks)
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
    first_fn, _ = shrunk_model(first, small, jax.tree.map(lambda a: None, small))
    masked = jax.jit(first_fn)(apply_masks(small, second_masks), x)
    np.testing.assert_allclose(jax.jit(small_fn)(smaller, x), masked, rtol=1e-5, atol=1e-5)
    assert smaller["params"]["layers"][0]["attn"]["query"]["kernel"].shape == (32, 16)  # 3 -> 2 heads of 8


def test_the_shrunk_model_speaks_the_training_protocol():
    _, config, variables = random_model("mlp", input_shape=(8, 8, 1), dropout_rate=0.5)
    small_fn, small = shrunk_model(config, variables, _all_masks(config, variables, 0.5))
    assert isinstance(small_fn, hamjax.ApplyFn)
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    train = jax.jit(lambda v, k: small_fn(v, x, train=True, rng=k, mutable=True)[0])
    evaluate = jax.jit(small_fn)(small, x)
    assert not np.allclose(train(small, jax.random.key(0)), evaluate, atol=1e-3)
    assert not np.allclose(train(small, jax.random.key(0)), train(small, jax.random.key(1)), atol=1e-3)


def test_masks_that_are_not_whole_groups_are_rejected():
    _, config, variables = random_model("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 24, 10))
    masks = structured_masks(config, variables, 0.5, granularity="neurons")
    layer = masks["params"]["layers"]

    def edit(path_leaf, fn):
        bad = jax.tree.map(lambda m: m, masks, is_leaf=lambda x: x is None)
        leaf = bad["params"]["layers"][0]
        leaf[path_leaf] = fn(np.array(leaf[path_leaf]))
        return bad

    dropped = int(np.flatnonzero(~np.asarray(layer[0]["bias"]))[0])
    with pytest.raises(ValueError, match=r"layers/0 is not masked as whole neurons"):
        shrink(config, variables, edit("bias", lambda b: np.ones_like(b)))
    with pytest.raises(ValueError, match=r"keeps only part of unit\(s\) \[" + str(dropped)):
        shrink(config, variables, edit("kernel", lambda k: np.where(np.arange(64)[:, None] == 0, True, k)))
    unstructured = jax.random.bernoulli(jax.random.key(0), 0.5, (64, 32))
    with pytest.raises(ValueError, match="keeps only part"):
        shrink(config, variables, edit("kernel", lambda k: np.asarray(unstructured)))
    with pytest.raises(ValueError, match="remove all 32 neurons of layers/0"):
        shrink(config, variables, _zero_layer(masks))
    head = jax.tree.map(lambda m: m, masks, is_leaf=lambda x: x is None)
    head["params"]["layers"][2]["kernel"] = np.ones((24, 10), bool) & (np.arange(10) > 0)
    with pytest.raises(ValueError, match=r"masks\[params/layers/2/kernel\] zeroes entries of a leaf that holds no"):
        shrink(config, variables, head)


def _zero_layer(masks):
    bad = jax.tree.map(lambda m: m, masks, is_leaf=lambda x: x is None)
    bad["params"]["layers"][0] = {"kernel": np.zeros((64, 32), bool), "bias": np.zeros(32, bool)}
    return bad


def test_mismatched_trees_are_rejected():
    _, config, variables = random_model("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 24, 10))
    masks = structured_masks(config, variables, 0.5, granularity="neurons")
    _, other_config, other = random_model("cnn", input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"masks do not mirror variables .*missing \['params/layers/0/bias'"):
        shrink(config, variables, structured_masks(other_config, other, 0.5, granularity="neurons"))
    with pytest.raises(ValueError, match=r"masks\[params/layers/0/kernel\] has shape \(32, 64\)"):
        bad = jax.tree.map(lambda m: m, masks, is_leaf=lambda x: x is None)
        bad["params"]["layers"][0]["kernel"] = np.ones((32, 64), bool)
        shrink(config, variables, bad)
    with pytest.raises(ValueError, match="variables do not match the config"):
        shrink(MLPConfig(sizes=(64, 32, 32, 10)), variables, masks)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda m: shrink(config, variables, m)[1])(masks)
    _, small = shrink(config, variables["params"], masks["params"])  # a bare params tree and its masks
    assert small["layers"][0]["kernel"].shape == (64, 16)
    with pytest.raises(TypeError, match="build_shrunk: expected"):
        build_shrunk(object())
