"""Structured masks: exact per-layer counts, whole groups, any params tree, traced sparsity, errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conformance import check_transform
from reference_models import random_model

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
    assert neuron_masks(variables, s)["params"]["layers"][0]["kernel"].tolist() == masks[0]["kernel"].tolist()


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
    variables = model.init(jax.random.key(0), jnp.ones((1, 8)))
    masks = neuron_masks(variables, 0.5)
    assert masks["params"]["Dense_2"]["kernel"] is None
    x = jax.random.normal(jax.random.key(1), (4, 8))
    hidden = nn.Dense(16).apply({"params": apply_masks(variables, masks)["params"]["Dense_0"]}, x)
    assert int((np.abs(np.asarray(hidden)).sum(axis=0) == 0).sum()) == 8
    assert len(_removed(masks["params"]["Dense_1"]["kernel"], 1)) == 6
    assert _removed(masks["params"]["Dense_1"]["bias"], 0) == _removed(masks["params"]["Dense_1"]["kernel"], 1)


def test_neuron_masks_on_a_plain_dict_orders_paths_naturally_and_honours_the_norm():
    params = {
        "layer_2": {"w": jnp.array([[1.0, 3.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), "b": jnp.ones(2)},
        "layer_10": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)},
    }
    l2 = neuron_masks(params, 0.5)
    l1 = neuron_masks(params, 0.5, norm="l1")
    assert l2["layer_10"]["w"] is None  # layer_10 is the last layer although it sorts first as a string
    assert l2["layer_2"]["b"].tolist() == [False, True]  # l2: [2, 3]
    assert l1["layer_2"]["b"].tolist() == [True, False]  # l1: [4, 3]
    every = neuron_masks(params, 0.5, exclude_last=False)
    assert int(every["layer_10"]["w"].all(axis=0).sum()) == 2


def test_neuron_masks_on_nnx_functional_variables_match_structured_masks():
    config, variables = _model("mlp", input_shape=(8, 8, 1))
    generic = neuron_masks(variables, 0.3)
    specific = structured_masks(config, variables, 0.3, granularity="neurons")
    for a, b in zip(
        jax.tree.leaves(generic, is_leaf=lambda x: x is None),
        jax.tree.leaves(specific, is_leaf=lambda x: x is None),
        strict=True,
    ):
        assert (a is None and b is None) or np.array_equal(a, b)


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
    with pytest.raises(ValueError, match=r"norm must be one of \('l1', 'l2'\), got 'l3'"):
        structured_prune(config, 0.5, granularity="neurons", norm="l3")
    with pytest.raises(ValueError, match="variables do not match the config"):
        structured_masks(MLPConfig(sizes=(64, 30, 10)), variables, 0.5, granularity="neurons")
    with pytest.raises(ValueError, match="variables have no leaf params/convs/0/kernel"):
        structured_masks(CNNConfig(input_shape=(8, 8, 1)), variables, 0.5, granularity="channels")
    with pytest.raises(TypeError, match="expected an MLPConfig"):
        structured_masks(object(), variables, 0.5, granularity="neurons")
