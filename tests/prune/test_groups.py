"""Groups of the reference models: the units structured pruning masks, the widths they set, ShrunkConfig."""

import numpy as np
import pytest
from reference_models import random_model

from hamjax.models import MLPConfig, ViTConfig
from hamjax.prune.groups import (
    GRANULARITIES,
    ShrunkConfig,
    Slot,
    check_shapes,
    flatten_paths,
    model_groups,
    unit_view,
    widths_of,
    with_widths,
)


def test_mlp_groups_are_the_hidden_layers_and_set_their_widths():
    config = MLPConfig(sizes=(64, 32, 24, 10))
    groups = model_groups(config)
    assert [(g.name, g.granularity, g.field, g.size) for g in groups] == [
        ("layers/0", "neurons", ("sizes", 1), 32),
        ("layers/1", "neurons", ("sizes", 2), 24),
    ]
    assert groups[0].dependent[0].path == ("params", "layers", 1, "kernel")
    assert widths_of(config) == {"sizes": (64, 32, 24, 10)}
    assert with_widths(config, {"sizes": [64, 16, 12, 10]}) == MLPConfig(sizes=(64, 16, 12, 10))


def test_vit_widths_round_trip_through_shrunk_config():
    base = ViTConfig(input_shape=(8, 8, 1), patch_size=4, hidden_size=32, num_heads=4, num_layers=2)
    widths = widths_of(base)
    assert widths == {"heads": (4, 4), "mlp_hidden": (64, 64), "token_hidden": (0, 0)}
    assert with_widths(base, widths) is base
    shrunk = with_widths(base, {**widths, "heads": (2, 4)})
    assert shrunk == ShrunkConfig(base, heads=(2, 4), mlp_hidden=(64, 64), token_hidden=(0, 0))
    assert widths_of(shrunk)["heads"] == (2, 4)
    assert {g.granularity for g in model_groups(shrunk)} == set(GRANULARITIES[ViTConfig])


def test_shrunk_config_rejects_widths_that_do_not_fit_the_base():
    base = ViTConfig(num_layers=2)
    with pytest.raises(ValueError, match="expected 2 entries, one per layer"):
        ShrunkConfig(base, heads=(2,), mlp_hidden=(64, 64), token_hidden=(0, 0))
    with pytest.raises(ValueError, match=r"layer 1 \(attention\) has 0 heads"):
        ShrunkConfig(base, heads=(2, 0), mlp_hidden=(64, 64), token_hidden=(0, 0))
    with pytest.raises(TypeError, match="expected a ViTConfig or HAMNetConfig, got MLPConfig"):
        ShrunkConfig(MLPConfig(), heads=(), mlp_hidden=(), token_hidden=())


def test_unit_view_gathers_repeated_and_tiled_units():
    x = np.arange(12).reshape(2, 6)  # axis 1: 2 tiles of 3 units; unit u owns columns u and 3 + u
    np.testing.assert_array_equal(unit_view(x, Slot((), 1, 1, 2), 3), [[0, 6, 3, 9], [1, 7, 4, 10], [2, 8, 5, 11]])
    heads = unit_view(np.arange(8), Slot((), 0, 4), 2)  # 2 heads of 4 dims
    np.testing.assert_array_equal(heads, [[0, 1, 2, 3], [4, 5, 6, 7]])


def test_check_shapes_names_the_missing_or_mismatched_leaf():
    _, config, variables = random_model("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10))
    flat, _ = flatten_paths(variables)
    check_shapes(config, model_groups(config), flat)
    with pytest.raises(ValueError, match=r"params/layers/0/kernel has shape \(64, 32\), expected 16 along axis 1"):
        check_shapes(MLPConfig(sizes=(64, 16, 10)), model_groups(MLPConfig(sizes=(64, 16, 10))), flat)
    del flat[("params", "layers", 0, "bias")]
    with pytest.raises(ValueError, match="variables have no leaf params/layers/0/bias"):
        check_shapes(config, model_groups(config), flat)
