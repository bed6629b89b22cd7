"""The ``fold`` recipe step: the trained reference CNN folded, then quantized, in one recipe."""

import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import random_model

import hamjax
from hamjax import recipes
from hamjax.recipes import RecipeError


@pytest.fixture(scope="module")
def cnn():
    apply_fn, _, params = random_model("cnn", input_shape=(8, 8, 1), channels=(4, 8), dense=(16,))
    return apply_fn, params


def test_fold_then_quantize_recipe(cnn, digits):
    apply_fn, params = cnn
    recipe = recipes.validate(
        {"name": "f", "steps": [{"kind": "fold"}, {"kind": "quantize", "batch_size": 32, "calibration_batches": 2}]}
    )
    ctx = recipes.run(recipe, recipes.Context(apply_fn, params, digits, progress=False, config=object()))
    assert [s.name for s in ctx.stages] == ["folded", "int8"]
    assert "2 layers folded" in ctx.stages[0].notes and ctx.config is None
    assert "batch_stats" not in ctx.params and "norms" not in ctx.params["params"]
    x = jnp.asarray(digits.test.x[:64])
    folded, original = ctx.apply_fn(ctx.params, x), apply_fn(params, x)
    assert float(jnp.max(jnp.abs(folded - original)) / jnp.max(jnp.abs(original))) <= 1e-5
    _, qparams = ctx.extras["quantized"]
    kernel = qparams["weights"]["params"]["convs"]["0"]["kernel"]  # calibrated on the folded kernel
    expected = np.asarray(ctx.params["params"]["convs"]["0"]["kernel"])
    assert np.max(np.abs(np.asarray(kernel.dequantize()) - expected)) <= np.max(np.abs(expected)) / 100


def test_nothing_to_fold_keeps_the_model(digits):
    apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 16, 10)))
    ctx = recipes.run(
        recipes.validate({"name": "f", "steps": [{"kind": "fold", "stage": "no bn"}]}),
        recipes.Context(apply_fn, params, digits, progress=False),
    )
    assert ctx.params is params and ctx.stages[0].name == "no bn" and "nothing to fold" in ctx.stages[0].notes


def test_bad_fields_are_named():
    with pytest.raises(RecipeError, match="stage"):
        recipes.validate({"name": "f", "steps": [{"kind": "fold", "stage": "../x"}]})
    with pytest.raises(RecipeError, match="energy"):
        recipes.validate({"name": "f", "steps": [{"kind": "fold", "energy": 0.5}]})
