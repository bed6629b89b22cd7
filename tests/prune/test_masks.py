"""Mask functions of hamjax.prune: exact counts, patterns, leaf selection, errors."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import prune

SPARSITIES = [0.0, 0.25, 0.5, 0.9]


def _tree(seed=0, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 4)
    tree = {
        "a": {"kernel": jax.random.normal(k[0], (20, 40)), "bias": jnp.linspace(-1, 1, 40)},
        "b": {"kernel": 3.0 * jax.random.normal(k[1], (40, 12)), "bias": jnp.ones(12)},
        "conv": {"kernel": jax.random.normal(k[2], (3, 3, 4, 8))},
        "norm": {"scale": jnp.full(10, 0.01)},
        "embedding": jax.random.normal(k[3], (12, 4)),
    }
    return jax.tree.map(lambda a: a.astype(dtype), tree)


SIZES = {"['a']['kernel']": 800, "['b']['kernel']": 480, "['conv']['kernel']": 288}


def _pruned(masks) -> dict[str, int]:
    leaves = jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda x: x is None)[0]
    return {jax.tree_util.keystr(p): int((~m).sum()) for p, m in leaves if m is not None}


class _Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))


def _three_kinds():
    nnx_pair = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))
    model = _Linen()
    linen_vars = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    plain = {"w": jax.random.normal(jax.random.key(1), (64, 16)), "b": jnp.zeros(16)}
    return {"nnx": nnx_pair[1], "linen": linen_vars, "plain": plain}


def test_default_filter_selects_kernels_only():
    assert prune.selected(_tree()) == list(SIZES)
    variables = {
        "params": {
            "Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
            "Embed_0": {"embedding": jnp.ones((5, 3))},
        },
        "batch_stats": {"odd": {"mean": jnp.ones((3, 4))}},
        "steps": jnp.ones((2, 2), jnp.int32),
    }
    assert prune.selected(variables) == ["['params']['Dense_0']['kernel']"]
    assert prune.selected(_tree(), filter=lambda p, x: x.ndim == 1) == [
        "['a']['bias']",
        "['b']['bias']",
        "['norm']['scale']",
    ]


def test_default_filter_handles_attribute_and_sequence_keys():
    tree = [{"kernel": jnp.ones((2, 2))}, (jnp.ones((2, 2)), jnp.ones(2))]
    assert prune.selected(tree) == ["[0]['kernel']", "[1][0]"]
    assert not prune.default_filter((jax.tree_util.GetAttrKey("pos_embed"),), jnp.ones((4, 4)))
    assert prune.default_filter((jax.tree_util.GetAttrKey("kernel"),), jnp.ones((4, 4)))
    assert prune.default_filter((jax.tree_util.DictKey(0), jax.tree_util.DictKey("kernel")), jnp.ones((4, 4)))


@pytest.mark.parametrize("kind", ["nnx", "linen", "plain"])
def test_all_three_model_kinds(kind):
    params = _three_kinds()[kind]
    masks = prune.magnitude_masks(params, 0.75)
    names = prune.selected(params)
    assert names and all("kernel" in n or n == "['w']" for n in names)
    out = prune.apply_masks(params, masks)
    assert set(prune.layer_sparsities(out)) == set(names)
    for name, frac in prune.layer_sparsities(out).items():
        assert frac == pytest.approx(0.75, abs=1e-3), name
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(out), strict=True):
        if jax.tree_util.keystr(path) not in names:  # biases untouched
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("s", SPARSITIES)
def test_magnitude_layer_counts_are_exact(s):
    params = _tree()
    masks = prune.magnitude_masks(params, s)
    assert _pruned(masks) == {k: math.floor(s * n) for k, n in SIZES.items()}
    # the pruned weights are the smallest ones
    w = np.abs(np.asarray(params["a"]["kernel"]))
    m = np.asarray(masks["a"]["kernel"])
    if s > 0:
        assert w[~m].max() <= w[m].min()
    assert masks["a"]["bias"] is None and masks["norm"]["scale"] is None and masks["embedding"] is None


def test_global_scope_counts_are_exact_and_differ_from_layer():
    params = _tree()
    total = sum(SIZES.values())
    for s in SPARSITIES:
        counts = _pruned(prune.magnitude_masks(params, s, scope="global"))
        assert sum(counts.values()) == math.floor(s * total)
    glob = _pruned(prune.magnitude_masks(params, 0.5, scope="global"))
    layer = _pruned(prune.magnitude_masks(params, 0.5))
    assert glob != layer
    # "b" has 3x larger weights, so global pruning takes far less of it
    assert glob["['b']['kernel']"] / 480 < 0.3 < 0.6 < glob["['a']['kernel']"] / 800


def test_ties_break_deterministically_to_exact_counts():
    params = {"w": jnp.zeros((10, 10)), "v": jnp.ones((5, 4))}
    masks = prune.magnitude_masks(params, 0.37)
    assert _pruned(masks) == {"['w']": 37, "['v']": 7}
    np.testing.assert_array_equal(masks["w"].reshape(-1), np.arange(100) >= 37)


@pytest.mark.parametrize(
    "make",
    [
        lambda p, s: prune.magnitude_masks(p, s),
        lambda p, s: prune.random_masks(p, s, jax.random.key(3)),
        lambda p, s: prune.saliency_masks(p, jax.tree.map(jnp.cos, p), s, scope="layer"),
    ],
    ids=["magnitude", "random", "saliency"],
)
def test_jit_vmap_over_sparsities_gives_exact_fractions(make):
    params = _tree()
    masks = jax.jit(jax.vmap(lambda s: make(params, s)))(jnp.array(SPARSITIES))
    for i, s in enumerate(SPARSITIES):
        counts = _pruned(jax.tree.map(lambda m, i=i: m[i], masks))
        assert counts == {k: math.floor(s * n) for k, n in SIZES.items()}
        assert counts["['a']['kernel']"] / 800 == s and counts["['b']['kernel']"] / 480 == s


def test_jit_vmap_global_scope_gives_exact_fractions():
    params = {"a": jax.random.normal(jax.random.key(0), (20, 40)), "b": jax.random.normal(jax.random.key(1), (40, 30))}
    masks = jax.jit(jax.vmap(lambda s: prune.magnitude_masks(params, s, scope="global")))(jnp.array(SPARSITIES))
    for i, s in enumerate(SPARSITIES):
        assert sum(_pruned(jax.tree.map(lambda m, i=i: m[i], masks)).values()) / 2000 == s


def test_random_masks_depend_on_key_and_are_exact():
    params = _tree()
    a = prune.random_masks(params, 0.5, jax.random.key(0))
    b = prune.random_masks(params, 0.5, jax.random.key(1))
    assert _pruned(a) == _pruned(b) == {k: n // 2 for k, n in SIZES.items()}
    assert not np.array_equal(a["a"]["kernel"], b["a"]["kernel"])
    np.testing.assert_array_equal(a["a"]["kernel"], prune.random_masks(params, 0.5, 0)["a"]["kernel"])


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_saliency_with_unit_grads_equals_magnitude(scope):
    params = _tree()
    ones = jax.tree.map(jnp.ones_like, params)
    sal = prune.saliency_masks(params, ones, 0.6, scope=scope)
    mag = prune.magnitude_masks(params, 0.6, scope=scope)
    chex.assert_trees_all_equal(sal, mag)


def test_saliency_uses_the_gradient():
    params = {"w": jnp.ones((4, 4))}
    grads = {"w": jnp.arange(16.0).reshape(4, 4)}
    masks = prune.saliency_masks(params, grads, 0.25)
    np.testing.assert_array_equal(masks["w"].reshape(-1), np.arange(16) >= 4)


def test_apply_masks_preserves_dtype_and_untouched_leaves():
    for dtype in (jnp.float32, jnp.bfloat16):
        params = _tree(dtype=dtype)
        out = prune.apply_masks(params, prune.magnitude_masks(params, 0.5))
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(out), strict=True):
            assert y.dtype == x.dtype and y.shape == x.shape
            if jax.tree_util.keystr(path) not in SIZES:
                np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
        assert prune.layer_sparsities(out) == {k: math.floor(0.5 * n) / n for k, n in SIZES.items()}


def test_sparsity_of_counts_zeros_and_masks():
    params = {"w": jnp.array([[0.0, 1.0], [2.0, 3.0]]), "v": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    assert prune.sparsity_of(params) == pytest.approx(1 / 10)
    masks = {"w": jnp.array([[True, False], [True, True]]), "v": None, "b": None}
    # over masked leaves only; a pruned entry counts even before the masks are applied
    assert prune.sparsity_of(params, masks) == 0.5
    assert prune.layer_sparsities(params) == {"['v']": 0.0, "['w']": 0.25}


BAD_SPARSITY = [(1.0, r"\[0, 1\)"), (-0.1, r"\[0, 1\)"), ("half", "sparsity"), (jnp.array([0.1, 0.2]), "scalar")]


@pytest.mark.parametrize(("value", "match"), BAD_SPARSITY)
def test_bad_sparsity_raises(value, match):
    params = _tree()
    for fn in (
        lambda s: prune.magnitude_masks(params, s),
        lambda s: prune.random_masks(params, s, jax.random.key(0)),
        lambda s: prune.saliency_masks(params, params, s),
        lambda s: prune.block_masks(params, s, block=(2, 2)),
    ):
        with pytest.raises(ValueError, match=match):
            fn(value)


def test_traced_sparsity_of_wrong_rank_raises():
    with pytest.raises(ValueError, match="scalar"):
        jax.jit(lambda s: prune.magnitude_masks(_tree(), s))(jnp.zeros(2))


def test_bad_arguments_raise():
    params = _tree()
    with pytest.raises(ValueError, match="scope must be one of"):
        prune.magnitude_masks(params, 0.5, scope="model")
    with pytest.raises(ValueError, match="filter selects no leaf"):
        prune.magnitude_masks(params, 0.5, filter=lambda p, x: False)
    with pytest.raises(ValueError, match="filter selects no leaf"):
        prune.selected({"b": jnp.ones(3)})
    with pytest.raises(ValueError, match="filter must be a callable"):
        prune.magnitude_masks(params, 0.5, filter="kernel")
    with pytest.raises(ValueError, match=r"grads do not match params: first mismatch at \['b'\]"):
        prune.saliency_masks(params, {"a": params["a"]}, 0.5)


def test_mask_mismatch_names_the_path():
    params = _tree()
    masks = prune.magnitude_masks(params, 0.5)
    with pytest.raises(ValueError, match=r"first mismatch at \['b'\]\['bias'\] in params"):
        prune.apply_masks(params, {**masks, "b": {"kernel": masks["b"]["kernel"]}})
    bad = jax.tree.map(lambda m: m, masks, is_leaf=lambda x: x is None)
    bad["a"]["kernel"] = masks["a"]["kernel"].astype(jnp.float32)
    with pytest.raises(ValueError, match=r"at \['a'\]\['kernel'\]: expected a bool array of shape \(20, 40\)"):
        prune.check_masks(params, bad)
    bad["a"]["kernel"] = masks["a"]["kernel"][:10]
    with pytest.raises(ValueError, match=r"at \['a'\]\['kernel'\]"):
        prune.apply_masks(params, bad)
    with pytest.raises(ValueError, match="prune no leaf"):
        prune.sparsity_of(params, jax.tree.map(lambda x: None, params))
