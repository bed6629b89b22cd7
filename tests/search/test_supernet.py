"""Tests for hamjax.search.supernet: the config, the genome space of its architectures, encode/decode, init."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from supernets import HAND_PICKED, NO_ATTENTION, OUTSIDE_THE_SPACE, SMALL, STEM2

from hamjax.search import supernet
from hamjax.search.nas_blocks import ACTIVATIONS
from hamjax.search.space import Choice, Int


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (8, 8)}, "input_shape"),
        ({"input_shape": (8, 0, 1)}, r"input_shape\[1\]"),
        ({"num_classes": 0}, "num_classes"),
        ({"patch_size": 3}, "patch_size 3 must divide"),
        ({"patch_size": 0}, "patch_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"max_layers": 0}, "max_layers"),
        ({"widths": ()}, "widths"),
        ({"widths": (32, 32)}, "distinct"),
        ({"widths": (32, 0)}, "widths"),
        ({"widths": (32, 6)}, r"divisible by num_heads=4, got \[6\]"),
        ({"num_heads": 0}, "num_heads"),
        ({"hidden_size": 2.5}, "hidden_size"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        supernet.SupernetConfig(**kwargs)


def test_config_defaults_and_properties():
    config = supernet.SupernetConfig()
    assert config.grid == (4, 4) and config.num_tokens == 16 and config.max_width == 128
    assert hash(config) == hash(supernet.SupernetConfig(input_shape=[28, 28, 1]))


def test_space_has_one_plus_three_genes_per_layer():
    s = supernet.space(SMALL)
    assert len(s) == 1 + 3 * SMALL.max_layers
    assert s.names[:4] == ("depth", "op0", "width0", "act0")
    assert s.genes["depth"] == Int(1, 3)
    assert s.genes["width2"] == Choice((4, 8, 12))
    assert s.genes["op1"].options == supernet.OPS and s.genes["act1"].options == ACTIVATIONS


@pytest.mark.parametrize("values", HAND_PICKED[:2])
def test_encode_decode_roundtrip(values):
    genome = supernet.encode(SMALL, values)
    assert all(v.shape == () and v.dtype == jnp.int32 for v in genome.values())
    assert int(genome["op0"]) == supernet.OPS.index(values["op0"])
    assert int(genome["width0"]) == SMALL.widths.index(values["width0"])
    assert supernet.decode(SMALL, genome) == values
    floats = {k: v.astype(jnp.float32) for k, v in genome.items()}
    assert supernet.decode(SMALL, floats) == values


@pytest.mark.parametrize(("change", "match"), OUTSIDE_THE_SPACE)
def test_encode_rejects_genomes_outside_the_space(change, match):
    with pytest.raises(ValueError, match=match):
        supernet.encode(SMALL, HAND_PICKED[1] | change)


def test_encode_and_decode_reject_wrong_keys_and_shapes():
    values = dict(HAND_PICKED[0])
    del values["act2"]
    with pytest.raises(ValueError, match="genes"):
        supernet.encode(SMALL, values)
    with pytest.raises(ValueError, match="scalar"):
        supernet.decode(SMALL, supernet.space(SMALL).encode(HAND_PICKED[0]))
    with pytest.raises(ValueError, match="'op0'"):
        supernet.decode(SMALL, supernet.encode(SMALL, HAND_PICKED[0]) | {"op0": jnp.int32(9)})


def test_init_shapes_and_dtypes():
    params = supernet.init(SMALL, jax.random.key(0))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    layer = params["layers"][2]
    assert layer["dense"]["w1"].shape == (12, 12) and layer["attention"]["out"].shape == (12, 12)
    assert layer["conv"]["kernel"].shape == (3, 3, 12) and params["pos"].shape == (16, 12)
    assert params["stem"]["kernel"].shape == (8, 12) and params["head"]["kernel"].shape == (12, 3)
    assert len(params["layers"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stem_channels": (3,), "patch_size": 4}, r"stem_channels=\(3,\)\) need patch_size 2, got 4"),
        ({"stem_channels": (3, 0), "patch_size": 4}, r"stem_channels\[\]"),
        ({"stem_channels": 3}, "stem_channels must be a tuple"),
    ],
)
def test_stem_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **kwargs)


def test_stem_config_properties_and_shapes():
    assert SMALL.stem_channels == () and SMALL.stem_convs == () and SMALL.embed_features == 2 * 2 * 2
    assert STEM2.stem_convs == ((2, 3), (3, 5)) and STEM2.embed_features == 5 and STEM2.grid == (2, 2)
    assert supernet.SupernetConfig(patch_size=4, stem_channels=[16, 32]).stem_channels == (16, 32)
    params = supernet.init(STEM2, jax.random.key(0))
    assert [c["kernel"].shape for c in params["stem"]["convs"]] == [(3, 3, 2, 3), (3, 3, 3, 5)]
    assert params["stem"]["kernel"].shape == (5, 12) and params["pos"].shape == (4, 12)


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        ((), "non-empty"),
        ("conv", "non-empty tuple"),
        (("conv", "pool"), "distinct names"),
        (("conv", "conv"), "distinct names"),
    ],
)
def test_ops_validation(ops, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, ops=ops)


def test_ops_subset_space_and_params():
    assert NO_ATTENTION.ops == ("dense", "conv", "identity")  # kept in OPS order
    assert SMALL.ops == supernet.OPS
    assert supernet.space(NO_ATTENTION).genes["op2"].options == ("dense", "conv", "identity")
    params = supernet.init(NO_ATTENTION, jax.random.key(0))
    assert all(set(layer) == {"ln", "dense", "conv"} for layer in params["layers"])
    assert set(supernet.init(dataclasses.replace(SMALL, ops=("identity",)), jax.random.key(0))["layers"][0]) == {"ln"}
    with pytest.raises(ValueError, match="'op0'"):
        supernet.encode(NO_ATTENTION, HAND_PICKED[0])  # attention is not in the space
    genome = supernet.encode(NO_ATTENTION, HAND_PICKED[2])
    assert int(genome["op0"]) == 2 and int(genome["op1"]) == 1 and int(genome["op2"]) == 0
