"""Structured masks: exact per-layer counts, whole groups, any params tree, traced sparsity, errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conformance import check_transform
from reference_models import plain_transformer, random_model

import hamjax
from hamjax import prune
from hamjax.models import CNNConfig, MLPConfig, ViTConfig
from hamjax.prune import apply_masks, neuron_masks, structured_masks, structured_prune


def _model(name, seed=0, **kw):
    """Config and random variables of a reference model."""
    return random_model(name, seed, **kw)[1:]


def _removed(mask, axis, repeat=1):
    """Indices of the units (``repeat`` consecutive entries along ``axis``) that ``mask`` zeroes entirely."""
    units = np.moveaxis(np.asarray(mask), axis, 0)
    units = units.reshape(units.shape[0] // repeat, -1)
    assert np.all(units.all(axis=1) | ~units.any(axis=1)), "a unit is masked only in part"
    return set(np.flatnonzero(~units.any(axis=1)).tolist())


def _gone(mask, axis):
    """Indices along ``axis`` whose whole slice ``mask`` zeroes (a leaf in two groups is masked along both axes)."""
    return set(
        np.flatnonzero(~np.moveaxis(np.asarray(mask), axis, 0).reshape(np.shape(mask)[axis], -1).any(axis=1)).tolist()
    )


def _expected_drop(s, size):
    return min(math.floor(s * size), size - 1)


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.999])
def test_mlp_neurons_drop_exact_counts_of_the_lowest_norm_columns(s):
    config, variables = _model("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 24, 10))
    masks = structured_masks(config, variables, s, granularity="neurons")["params"]["layers"]
    for i, size in enumerate((32, 24)):
        dropped = _removed(masks[i]["kernel"], 1)
        assert len(dropped) == _expected_drop(s, size)
        assert _removed(masks[i]["bias"], 0) == dropped
        norms = np.linalg.norm(np.asarray(variables["params"]["layers"][i]["kernel"]), axis=0)
        assert set(np.argsort(norms, kind="stable")[: len(dropped)].tolist()) == dropped
    assert masks[2]["kernel"] is None and masks[2]["bias"] is None
    apply_fn = random_model("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 24, 10))[0]
    generic = neuron_masks(variables, s, apply_fn=apply_fn, x=jnp.ones((1, 8, 8, 1)))["params"]["layers"]
    dropped = _removed(generic[0]["kernel"], 1)
    assert len(dropped) == _expected_drop(s, 32)
    assert _removed(generic[0]["bias"], 0) == _gone(generic[1]["kernel"], 0) == dropped
    assert generic[2]["bias"] is None


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (8, 8, 1)])
def test_cnn_channels_are_whole_conv_bias_and_batch_norm_slices(input_shape):
    config, variables = _model("cnn", input_shape=input_shape)
    masks = structured_masks(config, variables, 0.5, granularity="channels")
    masked = apply_masks(variables, masks)
    for i, size in enumerate(config.channels):
        dropped = _removed(masks["params"]["convs"][i]["kernel"], 3)
        assert len(dropped) == size // 2
        assert _removed(masks["params"]["convs"][i]["bias"], 0) == dropped
        for leaf in ("scale", "bias"):
            assert _removed(masks["params"]["norms"][i][leaf], 0) == dropped
        idx = sorted(dropped)
        assert not np.any(masked["params"]["convs"][i]["kernel"][..., idx])
        assert not np.any(masked["params"]["norms"][i]["bias"][jnp.array(idx)])
    assert all(m is None for m in jax.tree.leaves(masks["batch_stats"], is_leaf=lambda x: x is None))
    assert masks["params"]["dense"][0]["kernel"] is None
    dense = structured_masks(config, variables, 0.5, granularity="neurons")["params"]
    assert [len(_removed(dense["dense"][j]["kernel"], 1)) for j in range(2)] == [60, 42]
    assert dense["convs"][0]["kernel"] is None and dense["head"]["kernel"] is None


@pytest.mark.parametrize("name", ["vit", "hamnet"])
def test_heads_and_neurons_of_attention_models(name):
    config, variables = _model(name, input_shape=(8, 8, 1), hidden_size=32, num_heads=4)
    stack = "blocks" if name == "vit" else "layers"
    heads = structured_masks(config, variables, 0.5, granularity="heads")["params"][stack]
    neurons = structured_masks(config, variables, 0.25, granularity="neurons")["params"][stack]
    for i, kind in enumerate(("attention",) * config.num_layers if name == "vit" else config.layer_kinds):
        if kind == "attention":
            attn = heads[i]["attn"]
            dropped = _removed(attn["query"]["kernel"], 1, repeat=8)
            assert len(dropped) == 2
            for proj in ("query", "key", "value"):
                assert _removed(attn[proj]["kernel"], 1, repeat=8) == dropped
                assert _removed(attn[proj]["bias"], 0, repeat=8) == dropped
            assert attn["out"]["kernel"] is None and heads[i]["mlp"]["fc1"]["kernel"] is None
        else:
            token = neurons[i]["token_mlp"]["fc1"]
            assert len(_removed(token["kernel"], 1)) == 4 and _removed(token["bias"], 0) == _removed(token["kernel"], 1)
            assert heads[i]["token_mlp"]["fc1"]["kernel"] is None
        assert len(_removed(neurons[i]["mlp"]["fc1"]["kernel"], 1)) == 16
        assert neurons[i]["mlp"]["fc2"]["kernel"] is None


def test_a_head_scores_the_l1_norm_of_its_query_key_value_columns_and_out_rows():
    config, variables = _model("vit", input_shape=(8, 8, 1), hidden_size=32, num_heads=4)
    masks = structured_masks(config, variables, 0.9, granularity="heads", norm="l1")  # floor(3.6) = 3 of 4 heads go
    attn = variables["params"]["blocks"][0]["attn"]
    columns = sum(
        np.abs(np.asarray(attn[p]["kernel"])).reshape(32, 4, 8).sum(axis=(0, 2)) for p in ("query", "key", "value")
    )
    scores = columns + np.abs(np.asarray(attn["out"]["kernel"])).reshape(4, 8, 32).sum(axis=(1, 2))
    kept = set(range(4)) - _removed(masks["params"]["blocks"][0]["attn"]["value"]["kernel"], 1, repeat=8)
    assert kept == {int(np.argmax(scores))}


def test_masks_mirror_a_bare_params_tree():
    config, variables = _model("mlp", input_shape=(8, 8, 1))
    full = structured_masks(config, variables, 0.5, granularity="neurons")
    bare = structured_masks(config, variables["params"], 0.5, granularity="neurons")
    assert jax.tree.structure(bare, is_leaf=lambda x: x is None) == jax.tree.structure(
        full["params"], is_leaf=lambda x: x is None
    )
    np.testing.assert_array_equal(bare["layers"][1]["kernel"], full["params"]["layers"][1]["kernel"])


def test_neuron_masks_on_a_linen_dense_stack():
    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in (16, 12):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(3)(x)

    model = Stack()
    apply_fn, variables = hamjax.linen_functional(model, model.init(jax.random.key(0), jnp.ones((1, 8))))
    masks = neuron_masks(variables, 0.5, apply_fn=apply_fn, x=jnp.ones((1, 8)))
    assert masks["params"]["Dense_2"]["bias"] is None
    assert masks["params"]["Dense_2"]["kernel"].any(axis=0).all()  # every output column kept
    x = jax.random.normal(jax.random.key(1), (4, 8))
    hidden = nn.Dense(16).apply({"params": apply_masks(variables, masks)["params"]["Dense_0"]}, x)
    assert int((np.abs(np.asarray(hidden)).sum(axis=0) == 0).sum()) == 8
    second = _removed(masks["params"]["Dense_1"]["bias"], 0)
    assert len(second) == 6 and _gone(masks["params"]["Dense_1"]["kernel"], 1) == second
    assert _gone(masks["params"]["Dense_1"]["kernel"], 0) == _removed(masks["params"]["Dense_0"]["bias"], 0)
    assert _removed(masks["params"]["Dense_2"]["kernel"], 0) == second


def _tuple_stack(p, x):
    """A plain relu stack whose params are a list of ``(w, b)`` tuples: no leaf is named ``bias``."""
    for w, b in p[:-1]:
        x = jax.nn.relu(x @ w + b[None])
    w, b = p[-1]
    return x @ w + b[None]


def test_neuron_masks_on_w_b_tuples_mask_the_bias_so_a_removed_neuron_outputs_zero():
    rng = np.random.default_rng(0)
    params = [(jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.ones(shape[1])) for shape in ((5, 8), (8, 3))]
    x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    masks = neuron_masks(params, 0.5, apply_fn=_tuple_stack, x=x)
    dropped = _removed(masks[0][0], 1)
    assert len(dropped) == 4 and _removed(masks[0][1], 0) == dropped  # the bias goes with its neuron
    assert _removed(masks[1][0], 0) == dropped and masks[1][1] is None  # consumer rows; the output is kept
    (w, b), _ = apply_masks(params, masks)
    hidden = np.asarray(jax.nn.relu(x @ w + b[None]))
    assert not hidden[:, sorted(dropped)].any()  # relu(b) = 1 before the bias was found by use


def test_neuron_masks_honour_the_norm():
    w = jnp.array([[1.0, 3.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # column norms: l2 [2, 3], l1 [4, 3]
    params = [(w, jnp.zeros(2)), (jnp.zeros((2, 3)), jnp.zeros(3))]
    x = jnp.ones((1, 4))
    assert neuron_masks(params, 0.5, apply_fn=_tuple_stack, x=x)[0][1].tolist() == [False, True]
    assert neuron_masks(params, 0.5, norm="l1", apply_fn=_tuple_stack, x=x)[0][1].tolist() == [True, False]


def test_neuron_masks_keep_every_output_of_a_transformer_whose_last_path_is_pos():
    apply_fn, params, tokens = plain_transformer()
    assert sorted(params)[-1] == "pos"  # the params-only guess took pos for the classifier
    masks = neuron_masks(params, 0.5, apply_fn=apply_fn, x=tokens)
    assert masks["head"] is None or masks["head"].any(axis=0).all()  # all 10 outputs survive
    hidden = _removed(masks["mlp_bias"], 0)  # the MLP's 128 hidden units: half removed, with their bias
    assert len(hidden) == 64 and _gone(masks["mlp_in"], 1) == _gone(masks["mlp_out"], 0) == hidden
    logits = np.asarray(apply_fn(apply_masks(params, masks), tokens))
    assert logits.shape == (2, 10) and np.all(logits != 0)


def test_neuron_masks_on_every_model_kind_remove_the_same_units_from_every_member(any_model):
    apply_fn, params = any_model
    x = jnp.ones((1, 8, 8, 1))
    masks = neuron_masks(params, 0.5, apply_fn=apply_fn, x=x)
    (group,) = [g for g in prune.channel_groups(apply_fn, params, x) if g.prunable]
    flat = {
        jax.tree_util.keystr(p): m
        for p, m in jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda m: m is None)[0]
    }
    removed = [_removed(flat[member[0]], member[1]) for member in group.members]
    assert len(removed[0]) == 32 and all(r == removed[0] for r in removed)
    members = {member[0] for member in group.members}
    assert all(m is None for path, m in flat.items() if path not in members)


def test_neuron_masks_vmap_over_sparsities():
    params, x = (
        [(jnp.asarray(np.arange(40.0).reshape(5, 8), jnp.float32), jnp.ones(8)), (jnp.ones((8, 3)), jnp.zeros(3))],
        jnp.ones((1, 5)),
    )
    masks = jax.vmap(lambda s: neuron_masks(params, s, apply_fn=_tuple_stack, x=x))(jnp.array([0.0, 0.25, 0.5]))
    assert np.asarray(masks[0][1]).sum(axis=1).tolist() == [8, 6, 4]


def test_jit_vmap_over_sparsities_gives_exact_counts():
    config, variables = _model("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 24, 10))
    sparsities = jnp.array([0.0, 0.1, 0.25, 0.5, 0.75, 0.99])

    def prune(s):
        t = structured_prune(config, s, granularity="neurons")
        pruned, _ = t.apply(variables, t.init(variables))
        return [(p["kernel"] != 0).any(axis=0).sum() for p in pruned["params"]["layers"].values()]

    kept = jax.jit(jax.vmap(prune))(sparsities)
    for j, s in enumerate(np.asarray(sparsities, np.float32).tolist()):
        assert [int(k[j]) for k in kept] == [32 - _expected_drop(s, 32), 24 - _expected_drop(s, 24), 10]

    vit_config, vit_variables = _model("vit", input_shape=(8, 8, 1), hidden_size=32, num_heads=4)

    def heads(s):
        masks = structured_masks(vit_config, vit_variables, s, granularity="heads")
        return masks["params"]["blocks"][1]["attn"]["key"]["bias"].reshape(4, 8).all(axis=1).sum()

    np.testing.assert_array_equal(jax.jit(jax.vmap(heads))(jnp.array([0.0, 0.25, 0.5, 0.75, 0.9])), [4, 3, 2, 1, 1])


def test_structured_prune_passes_the_conformance_check():
    def params_fn(dtype, seed=0):
        _, variables = _model("mlp", seed=seed, input_shape=(8, 8, 1), sizes=(64, 32, 24, 10))
        return jax.tree.map(lambda a: a.astype(dtype), variables["params"])

    config = MLPConfig(sizes=(64, 32, 24, 10))
    check_transform(
        lambda hp: structured_prune(config, hp["sparsity"], granularity="neurons"),
        {"sparsity": jnp.array([0.0, 0.25, 0.5])},
        params_fn=params_fn,
    )


def test_errors_name_the_argument():
    config, variables = _model("mlp", input_shape=(8, 8, 1))
    with pytest.raises(
        ValueError, match=r"granularity must be one of \('neurons',\) for a MLPConfig model, got 'heads'"
    ):
        structured_masks(config, variables, 0.5, granularity="heads")
    with pytest.raises(ValueError, match=r"granularity must be one of \('heads', 'neurons'\) .*got 'channels'"):
        structured_prune(ViTConfig(), 0.5, granularity="channels")
    for bad in (1.0, -0.1, float("nan"), jnp.array([0.1, 0.2]), True):
        with pytest.raises(ValueError, match=r"structured_masks: sparsity must be a scalar in \[0, 1\), got"):
            structured_masks(config, variables, bad, granularity="neurons")
    with pytest.raises(ValueError, match=r"neuron_masks: sparsity must be a scalar in \[0, 1\), got 1\.5"):
        neuron_masks(variables, 1.5)
    with pytest.raises(ValueError, match=r"neuron_masks: apply_fn and x are needed"):
        neuron_masks(variables, 0.5)
    with pytest.raises(
        ValueError, match=r"neuron_masks: apply_fn has no prunable channel group; reasons: \['model output'\]"
    ):
        neuron_masks({"w": jnp.ones((3, 2))}, 0.5, apply_fn=lambda p, x: x @ p["w"], x=jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"norm must be one of \('l1', 'l2'\), got 'l3'"):
        structured_prune(config, 0.5, granularity="neurons", norm="l3")
    with pytest.raises(ValueError, match="variables do not match the config"):
        structured_masks(MLPConfig(sizes=(64, 30, 10)), variables, 0.5, granularity="neurons")
    with pytest.raises(ValueError, match="variables have no leaf params/convs/0/kernel"):
        structured_masks(CNNConfig(input_shape=(8, 8, 1)), variables, 0.5, granularity="channels")
    with pytest.raises(TypeError, match="expected an MLPConfig"):
        structured_masks(object(), variables, 0.5, granularity="neurons")
