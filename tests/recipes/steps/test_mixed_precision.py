"""The ``precision`` recipe step and the bundled ``bf16`` recipe, on the digits data."""

import jax
import jax.numpy as jnp
import pytest

import hamjax
from hamjax import precision, recipes
from hamjax.recipes import RecipeError


def _context(digits):
    apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))
    return recipes.Context(apply_fn, params, digits, progress=False, seed=0)


def _small(recipe: recipes.Recipe, **precision_fields) -> recipes.Recipe:
    """The recipe with epochs fit for digits' 1,258 training images."""
    raw = recipe.to_dict()
    for step in raw["steps"]:
        if step["kind"] == "train":
            step.update(epochs=4, batch_size=32, learning_rate=5e-3)
        else:
            step.update(batch_size=32, learning_rate=1e-3, **precision_fields)
    return recipes.validate(raw)


def test_bundled_bf16_recipe_loads():
    assert "bf16" in recipes.available()
    recipe = recipes.load("bf16")
    assert [s.kind for s in recipe.steps] == ["train", "precision"]
    step = recipe.steps[1].params
    assert step["policy"] == "p=f32,c=bf16,o=f32" and step["loss_scale"] == "auto" and step["stage"] == "bf16"
    assert recipes.validate(recipe.to_dict()) == recipe


def test_defaults_and_bad_fields_are_named():
    r = recipes.validate({"name": "x", "steps": [{"kind": "precision"}]})
    assert r.steps[0].params == {
        "policy": "p=f32,c=bf16,o=f32",
        "loss_scale": "auto",
        "finetune_epochs": 2,
        "learning_rate": 5e-4,
        "batch_size": 128,
        "stage": "bf16",
    }
    bad = {
        "policy": (r"steps\[0\]: policy='p=f32,c=bf17' is not a dtype policy.*unknown dtype 'bf17'", "p=f32,c=bf17"),
        "loss_scale": (r"steps\[0\].loss_scale must be one of \['auto', 'dynamic', 'none'\], got 'always'", "always"),
        "finetune_epochs": (r"steps\[0\].finetune_epochs must be >= 0, got -1", -1),
        "learning_rate": (r"steps\[0\].learning_rate must be > 0.0, got 0.0", 0.0),
    }
    for name, (match, value) in bad.items():
        with pytest.raises(RecipeError, match=match):
            recipes.validate({"name": "x", "steps": [{"kind": "precision", name: value}]})


def test_bad_policy_fails_at_load_time_naming_the_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[[steps]]\nkind = "precision"\npolicy = "p=f32,c=f8,o=f32"\n')
    with pytest.raises(RecipeError, match=r"bad.toml: steps\[0\]: policy='p=f32,c=f8,o=f32'.*'f8'"):
        recipes.load(path)


def test_bf16_recipe_runs_end_to_end(digits):
    ctx = _context(digits)
    base = ctx.apply_fn
    ctx = recipes.run(_small(recipes.load("bf16"), finetune_epochs=1), ctx)
    dense, bf16 = ctx.stages
    assert (dense.name, bf16.name) == ("dense", "bf16")
    policy = precision.Policy.parse("p=f32,c=bf16,o=f32")
    assert ctx.extras["policy"] == str(policy) and precision.policy_of(ctx.apply_fn) == policy
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(ctx.params))
    assert ctx.apply_fn(ctx.params, digits.test.x[:4]).dtype == jnp.float32
    assert bf16.size_bytes == dense.size_bytes  # float32 master weights
    dense_acc = hamjax.train.evaluate(base, dense.params, digits.test)["accuracy"]
    bf16_acc = hamjax.train.evaluate(ctx.apply_fn, ctx.params, digits.test)["accuracy"]
    assert dense_acc > 0.93 and abs(bf16_acc - dense_acc) <= 0.03, (dense_acc, bf16_acc)
    (row,) = hamjax.report.measure_stages([bf16], digits.test.x, digits.test.y, runs=2)[:1]
    assert row.accuracy == pytest.approx(bf16_acc)


def test_bfloat16_params_without_finetuning_halve_the_bytes_and_later_steps_train_under_the_policy(digits):
    recipe = recipes.validate(
        {
            "name": "t",
            "steps": [
                {"kind": "train", "epochs": 4, "batch_size": 32, "learning_rate": 5e-3},
                {"kind": "precision", "policy": "p=bf16,c=bf16,o=f32", "finetune_epochs": 0, "stage": "all bf16"},
                {"kind": "train", "epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "stage": "tuned"},
            ],
        }
    )
    ctx = recipes.run(recipe, _context(digits))
    dense, cast, tuned = ctx.stages
    assert cast.size_bytes * 2 == dense.size_bytes
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(cast.params))
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(tuned.params))  # trained in the param dtype
    assert hamjax.train.evaluate(ctx.apply_fn, ctx.params, digits.test)["accuracy"] > 0.9


def test_float16_step_finetunes_with_dynamic_loss_scaling(digits, tmp_path):
    recipe = _small(recipes.load("bf16"), policy="p=f32,c=f16,o=f32", stage="f16", finetune_epochs=1)
    ctx = _context(digits)
    ctx.workdir = str(tmp_path)
    ctx = recipes.run(recipe, ctx)
    assert ctx.stages[-1].name == "f16" and ctx.extras["policy"] == "p=f32,c=f16,o=f32"
    assert any(p.name.startswith("checkpoints-1-f16") for p in tmp_path.iterdir())
    assert hamjax.train.evaluate(ctx.apply_fn, ctx.params, digits.test)["accuracy"] > 0.9
