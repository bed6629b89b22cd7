"""Supernet configs, hand-picked architectures and genomes outside the space, for test_supernet.py and test_nas.py."""

import dataclasses

import jax

from hamjax.search import supernet

# A 4x4 token grid so the 3x3 convolution sees real neighbours; three layers so depth 1..3 are all tried.
SMALL = supernet.SupernetConfig(
    input_shape=(8, 8, 2), num_classes=3, patch_size=2, hidden_size=12, max_layers=3, widths=(4, 8, 12), num_heads=2
)
TINY = supernet.SupernetConfig(
    input_shape=(8, 8, 1), patch_size=4, hidden_size=16, max_layers=2, widths=(8, 16), num_heads=2
)
# SMALL's space behind convolutional stems: one stride-2 convolution keeps SMALL's 4x4 token grid
# (8x8x2 -> 4x4x3); two need patch_size 4 (8x8x2 -> 4x4x3 -> 2x2x5, a 2x2 grid).
STEM = dataclasses.replace(SMALL, stem_channels=(3,))
STEM2 = dataclasses.replace(SMALL, patch_size=4, stem_channels=(3, 5))
# STEM without attention: a subset of the ops, given out of OPS order.
NO_ATTENTION = dataclasses.replace(STEM, ops=("identity", "conv", "dense"))


def architecture(depth, *layers, config=SMALL):
    """Gene values from (op, width, act) per layer; unspecified layers are filled with dense/4/relu."""
    values = {"depth": depth}
    for i in range(config.max_layers):
        op, width, act = layers[i] if i < len(layers) else ("dense", config.widths[0], "relu")
        values |= {f"op{i}": op, f"width{i}": width, f"act{i}": act}
    return values


def sampled(config, n, seed=0):
    genomes = supernet.space(config).sample(jax.random.key(seed), n)
    return [supernet.space(config).decode(genomes, i) for i in range(n)]


HAND_PICKED = [
    architecture(1, ("attention", 4, "gelu")),
    architecture(3, ("dense", 12, "relu"), ("conv", 4, "tanh"), ("attention", 8, "silu")),
    architecture(3, ("identity", 8, "relu"), ("conv", 12, "silu"), ("dense", 8, "gelu")),
    architecture(2, ("conv", 8, "relu"), ("identity", 4, "tanh")),
    architecture(3, ("attention", 12, "tanh"), ("attention", 4, "relu"), ("conv", 8, "gelu")),
]

# Changes that take HAND_PICKED[1] outside SMALL's space, with the text naming the gene at fault.
OUTSIDE_THE_SPACE = [
    ({"depth": 0}, "'depth'"),
    ({"depth": 4}, "'depth'"),
    ({"width1": 7}, "'width1'"),
    ({"op2": "pool"}, "'op2'"),
    ({"act0": "sigmoid"}, "'act0'"),
]
