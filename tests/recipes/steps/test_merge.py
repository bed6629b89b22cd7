"""The ``merge`` recipe step: token merging on the digits ViT, bad fields named, a model without markers refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import random_model

import hamjax
from hamjax import recipes
from hamjax.recipes import RecipeError


@pytest.fixture(scope="module")
def vit():
    apply_fn, _, params = random_model("vit", input_shape=(8, 8, 1), patch_size=2, hidden_size=16)
    return apply_fn, params


def _recipe(**fields):
    return recipes.validate({"name": "m", "steps": [{"kind": "merge", **fields}]})


def test_defaults_and_bad_fields_are_named():
    assert _recipe().steps[0].params == {"r": 8, "class_token": False, "proportional": True, "stage": "merged"}
    with pytest.raises(RecipeError, match=r"steps\[0\].r must be >= 0, got -1"):
        _recipe(r=-1)
    with pytest.raises(RecipeError, match=r"steps\[0\].r must be int, got 2.5"):
        _recipe(r=2.5)
    with pytest.raises(RecipeError, match=r"steps\[0\].class_token must be bool"):
        _recipe(class_token="yes")


def test_merge_step_runs_the_merged_model(vit, digits):
    apply_fn, params = vit
    ctx = recipes.run(_recipe(r=3), recipes.Context(apply_fn, params, digits, progress=False))
    assert [s.name for s in ctx.stages] == ["merged"]
    assert ctx.stages[0].notes == "r=3 per block: tokens 16 -> 13 -> 10"
    assert ctx.params is params
    x = jnp.asarray(digits.test.x[:8])
    merged, original = jax.jit(ctx.apply_fn)(params, x), jax.jit(apply_fn)(params, x)
    assert merged.shape == original.shape and not np.allclose(merged, original, atol=1e-4)
    same = recipes.run(_recipe(r=0), recipes.Context(apply_fn, params, digits, progress=False))
    np.testing.assert_array_equal(jax.jit(same.apply_fn)(params, x), original)


def test_too_many_tokens_and_unmarked_models_are_refused(vit, digits):
    apply_fn, params = vit
    with pytest.raises(RecipeError, match=r"merge: merge_tokens: r=7 merges 7 tokens at 'blocks/1/attention/merge'"):
        recipes.run(_recipe(r=7), recipes.Context(apply_fn, params, digits, progress=False))
    mlp, mparams = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 16, 10)))
    with pytest.raises(RecipeError, match="marks no tokens to merge"):
        recipes.run(_recipe(r=1), recipes.Context(mlp, mparams, digits, progress=False))
