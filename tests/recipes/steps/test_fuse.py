"""The ``fuse`` recipe step: the ViT's attention fused in a recipe; a model without attention left alone."""

import jax
import jax.numpy as jnp
import pytest

import hamjax
from hamjax import recipes
from hamjax.graph import fused
from hamjax.recipes import RecipeError


def test_fuse_recipe(digits):
    apply_fn, params = hamjax.functional(hamjax.models.build("vit", input_shape=(8, 8, 1), patch_size=4))
    recipe = recipes.validate({"name": "f", "steps": [{"kind": "fuse", "implementation": "xla"}]})
    ctx = recipes.run(recipe, recipes.Context(apply_fn, params, digits, progress=False))
    assert ctx.stages[0].name == "fused" and ctx.stages[0].notes.startswith("2 attentions fused")
    x = jnp.asarray(digits.test.x[:32])
    assert fused.count(jax.make_jaxpr(ctx.apply_fn)(ctx.params, x)) == 2
    assert float(jnp.max(jnp.abs(ctx.apply_fn(ctx.params, x) - apply_fn(params, x)))) <= 1e-5


def test_nothing_to_fuse_keeps_the_model(digits):
    apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 16, 10)))
    ctx = recipes.run(
        recipes.validate({"name": "f", "steps": [{"kind": "fuse"}]}),
        recipes.Context(apply_fn, params, digits, progress=False),
    )
    assert ctx.apply_fn is apply_fn and "nothing to fuse" in ctx.stages[0].notes


def test_unknown_implementation_is_refused():
    with pytest.raises(RecipeError, match="implementation"):
        recipes.validate({"name": "f", "steps": [{"kind": "fuse", "implementation": "flash"}]})
