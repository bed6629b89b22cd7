import jax
import jax.numpy as jnp
import pytest

import hamjax
from hamjax import recipes, tune
from hamjax.tune.result import recipe_of


def init(key):
    return {"w": jax.random.normal(key, (64, 10)) / 8.0, "b": jnp.zeros(10)}


def linear(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None]


@pytest.fixture(scope="module")
def recipe_search(digits):
    space = tune.Space.from_recipe("baseline")
    return tune.run(linear, init, digits, space, trials=4, batch=4, epochs=1, execution="vmap", progress=False)


def test_recipe_of_a_table_space():
    space = tune.Space({"learning_rate": {"low": 1e-3, "high": 1e-1}, "sparsity": {"low": 0.1, "high": 0.9},
                        "bits": {"choices": [4, 8]}, "augment": 0.3})  # fmt: skip
    r = recipe_of(space, {"learning_rate": 0.01, "sparsity": 0.5, "bits": 4, "augment": 0.3}, epochs=3)
    train, prune, quantize = r.steps
    assert (train.kind, train.params["epochs"], train.params["learning_rate"]) == ("train", 3, 0.01)
    assert train.params["augment"] == "randaugment=0.3" and train.params["optimizer"] == "adamw"
    assert (prune.kind, prune.params["sparsity"], quantize.kind, quantize.params["bits"]) == (
        "prune",
        0.5,
        "quantize",
        4,
    )


def test_recipe_search_fills_the_recipe(recipe_search, tmp_path):
    best = recipe_search.best_params
    path = recipe_search.write_recipe(tmp_path / "best.toml")
    written = recipes.load(path)
    baseline = recipes.load("baseline")
    assert len(written.steps) == len(baseline.steps) and not any(s.search for s in written.steps)
    assert written.steps[0].params["learning_rate"] == best["learning_rate"]
    assert written.steps[0].params["batch_size"] == best["batch_size"]
    assert written.steps[0].params["epochs"] == baseline.steps[0].params["epochs"]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_written_recipe_runs(digits, tmp_path):
    space = {"learning_rate": {"low": 1e-2, "high": 1e-1, "log": True}, "batch_size": {"choices": [64, 128]}}
    result = tune.run(linear, init, digits, space, trials=4, batch=2, epochs=1, execution="vmap", progress=False)
    path = result.write_recipe(tmp_path / "best.toml")
    out = hamjax.optimize(linear, init(jax.random.key(0)), digits, recipe=str(path))
    assert out.recipe.steps[0].params["learning_rate"] == result.best_params["learning_rate"]
    assert out.stages[-1].accuracy > 0.8


def test_best_trial_of_several_objectives(digits):
    space = {"learning_rate": {"low": 1e-2, "high": 1e-1, "log": True}, "sparsity": {"low": 0.0, "high": 0.9}}
    result = tune.run(linear, init, digits, space, trials=4, batch=4, epochs=1, execution="vmap", progress=False,
                      objectives=("accuracy", "size"), sampler="random")  # fmt: skip
    front = result.study.best_trials
    assert result.best_trial in front
    assert result.best_values["accuracy"] == max(t.values[0] for t in front)


def test_no_complete_trial_is_an_error(digits):
    space = {"learning_rate": {"choices": [1e38]}}
    result = tune.run(linear, init, digits, space, trials=2, batch=2, epochs=1, execution="vmap", progress=False)
    with pytest.raises(ValueError, match="has no COMPLETE trial yet"):
        _ = result.best_params


def test_recipe_with_weight_decay_trains_adamw():
    r = recipes.validate({"name": "r", "steps": [
        {"kind": "train", "search": {"weight_decay": {"low": 0.0, "high": 0.1}}}]})  # fmt: skip
    space = tune.Space.from_recipe(r)
    assert recipe_of(space, space.values({"weight_decay": 0.01}), epochs=1).steps[0].params["optimizer"] == "adamw"
    assert recipe_of(space, space.values({"weight_decay": 0.0}), epochs=1).steps[0].params["optimizer"] == "adam"


def test_recipe_of_warmup_mixup_and_a_schedule_the_train_step_cannot_say():
    space = tune.Space({"warmup_steps": {"low": 0, "high": 20}, "mixup": {"low": 0.0, "high": 0.4},
                        "schedule": {"choices": ["constant", "cosine"]}})  # fmt: skip
    r = recipe_of(space, {"warmup_steps": 5, "mixup": 0.2, "schedule": "cosine"}, epochs=1)
    assert (r.steps[0].params["warmup_steps"], r.steps[0].params["mixup"]) == (5, 0.2)
    assert "differs" not in r.description
    assert (
        "differs" in recipe_of(space, {"warmup_steps": 5, "mixup": 0.0, "schedule": "constant"}, epochs=1).description
    )
