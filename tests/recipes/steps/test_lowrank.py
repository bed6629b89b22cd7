"""The ``lowrank`` recipe step: factor, finetune the factors, resume from the step's checkpoints."""

import jax
import numpy as np
import pytest

import hamjax
from hamjax import graph, recipes
from hamjax.recipes import RecipeError


@pytest.fixture(scope="module")
def mlp():
    return hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))


def n_params(tree) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def factors(params):
    nodes = jax.tree.leaves(params, is_leaf=lambda n: isinstance(n, graph.Factors))
    return [n for n in nodes if isinstance(n, graph.Factors)]


def test_budget_factors_and_finetunes(mlp, digits, tmp_path):
    apply_fn, params = mlp
    step = {"kind": "lowrank", "budget": 0.5, "finetune_epochs": 1, "batch_size": 64}
    recipe = recipes.validate({"name": "l", "steps": [step]})
    ctx = recipes.run(recipe, recipes.Context(apply_fn, params, digits, progress=False, workdir=str(tmp_path)))
    assert ctx.stages[0].name == "lowrank" and "layers factored" in ctx.stages[0].notes
    assert len(factors(ctx.params)) >= 1 and n_params(ctx.params) <= 0.5 * n_params(params)
    untrained = graph.lowrank(apply_fn, params, digits.train.x[:2], budget=0.5)[1]
    assert not np.allclose(factors(untrained)[0].u, factors(ctx.params)[0].u)  # the factors were trained
    again = recipes.run(recipe, recipes.Context(apply_fn, params, digits, progress=False, workdir=str(tmp_path)))
    assert again.resumed == {"lowrank": again.resumed["lowrank"]} and again.resumed["lowrank"] > 0


def test_energy_without_finetuning(mlp, digits):
    apply_fn, params = mlp
    recipe = recipes.validate({"name": "l", "steps": [{"kind": "lowrank", "energy": 0.3, "finetune_epochs": 0}]})
    ctx = recipes.run(recipe, recipes.Context(apply_fn, params, digits, progress=False))
    assert "energy 0.3" in ctx.stages[0].notes and factors(ctx.params)


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({}, "give energy"),
        ({"energy": 0.5, "budget": 0.5}, "not both"),
        ({"energy": 1.5}, "energy"),
        ({"budget": 0.0}, "budget"),
        ({"budget": 0.5, "scope": "global"}, "scope"),
        ({"budget": 0.5, "finetune_epochs": -1}, "finetune_epochs"),
    ],
)
def test_bad_fields_are_named(step, match):
    with pytest.raises(RecipeError, match=match):
        recipes.validate({"name": "l", "steps": [{"kind": "lowrank", **step}]})
