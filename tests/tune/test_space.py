import re

import numpy as np
import optuna
import pytest

from hamjax import recipes
from hamjax.tune import Space

SPEC = {
    "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "batch_size": {"choices": [64, 128]},
    "weight_decay": 1e-4,
}


def test_traced_bucketed_and_fixed_names():
    space = Space(SPEC)
    assert space.names == ("learning_rate", "label_smoothing", "batch_size")
    assert space.traced == ("learning_rate", "label_smoothing")
    assert space.bucketed == ("batch_size",)
    assert space.fixed == {"weight_decay": 1e-4}
    members = [{"learning_rate": 0.01, "label_smoothing": 0.1, "batch_size": 64}] * 3
    hp = space.hparams(members)
    assert sorted(hp) == ["label_smoothing", "learning_rate", "weight_decay"]
    assert all(v.shape == (3,) and v.dtype == np.float32 for v in hp.values())
    np.testing.assert_allclose(hp["weight_decay"], 1e-4)
    assert space.bucket(members[0]) == (("batch_size", 64),)
    assert Space(space.to_dict()) == space


def test_distributions_and_grid():
    space = Space(
        {**SPEC, "bits": {"low": 4, "high": 8, "step": 2}, "sparsity": {"low": 0.0, "high": 0.5, "step": 0.25}}
    )
    dists = space.distributions()
    assert isinstance(dists["learning_rate"], optuna.distributions.FloatDistribution) and dists["learning_rate"].log
    assert isinstance(dists["batch_size"], optuna.distributions.CategoricalDistribution)
    assert isinstance(dists["bits"], optuna.distributions.IntDistribution)
    with pytest.raises(ValueError, match="grid sampler: learning_rate needs choices or a step"):
        space.grid()
    grid = Space({"bits": {"low": 4, "high": 8, "step": 2}, "sparsity": {"low": 0.0, "high": 0.5, "step": 0.25}}).grid()
    assert grid == {"sparsity": [0.0, 0.25, 0.5], "bits": [4, 6, 8]}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({}, "searches nothing"),
        ({"weight_decay": 0.1}, "searches nothing"),
        ({"dropout": {"low": 0.0, "high": 0.5}}, r"\['dropout'\] cannot be searched"),
        ({"learning_rate": {"low": 0.1, "high": 0.01}}, "needs low < high"),
        ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log scale needs low > 0"),
        ({"sparsity": {"low": 0.1, "high": 1.0}}, r"sparsity.high must be a number in \[0.0, 1.0\)"),
        ({"bits": {"low": 2.5, "high": 8}}, "bits.low must be an integer"),
        ({"bits": {"low": 1, "high": 8}}, r"bits.low must be an integer in \[2, 16\]"),
        ({"batch_size": {"choices": []}}, "non-empty list"),
        ({"batch_size": {"choices": [64, 64]}}, "repeat a value"),
        ({"batch_size": {"choices": [0, 64]}}, "choices must each be an integer >= 1"),
        ({"learning_rate": {"low": 1e-3, "high": 0.1, "choices": [0.1]}}, "non-empty list"),
        ({"learning_rate": {"low": 1e-3}}, "needs low and high"),
        ({"learning_rate": {"low": 1e-3, "high": 0.1, "step": -1}}, "step must be a number > 0"),
        ({"learning_rate": "fast"}, "must be a table or a number"),
        ({"warmup_steps": {"low": 0, "high": 10.5}}, "warmup_steps.high must be an integer >= 0"),
        ({"warmup_steps": {"low": -1, "high": 10}}, "warmup_steps.low must be an integer >= 0"),
        ({"mixup": {"low": -0.1, "high": 0.4}}, "mixup.low must be a number >= 0"),
        ({"schedule": {"choices": ["constant", "step"]}}, r"schedule choices must each be one of \('constant'"),
        ({"schedule": {"low": 0, "high": 1}}, r"schedule takes \{choices = \[...\]\}"),
        ({"learning_rate": {"low": 1e-3, "high": 0.1}, "schedule": "linear"}, "schedule must be a table or one of"),
        ({"decay_steps": {"low": 10, "high": 100}}, r"\['decay_steps'\] cannot be searched"),
        ({"width": {"choices": [0, 16]}}, "width choices must each be an integer >= 1"),
        ({"width": {"low": 8, "high": 16.5}}, "width.high must be an integer >= 1"),
    ],
)
def test_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        Space(spec)


def test_from_recipe_fills_targets_and_fixed_values():
    r = recipes.validate(
        {
            "name": "r",
            "steps": [
                {"kind": "train", "learning_rate": 0.002, "search": {"weight_decay": {"low": 0.0, "high": 0.1}}},
                {"kind": "prune", "search": {"sparsity": {"low": 0.3, "high": 0.9}}},
                {"kind": "quantize", "bits": 6},
            ],
        }
    )
    space = Space.from_recipe(r)
    assert space.targets == {"weight_decay": (0, "weight_decay"), "sparsity": (1, "sparsity")}
    assert space.fixed["learning_rate"] == 0.002 and space.fixed["bits"] == 6 and space.fixed["batch_size"] == 128
    assert space.recipe is r


def test_from_recipe_refuses_what_one_call_cannot_vary():
    with pytest.raises(ValueError, match=r"steps\[1\].search.param_ratio \(distill\) cannot be searched"):
        Space.from_recipe("default")
    two = {
        "name": "r",
        "steps": [
            {"kind": "train", "search": {"learning_rate": {"low": 1e-4, "high": 1e-2}}},
            {"kind": "train", "search": {"learning_rate": {"low": 1e-4, "high": 1e-2}}},
        ],
    }
    with pytest.raises(ValueError, match=r"already searched by steps\[0\]"):
        Space.from_recipe(recipes.validate(two))
    with pytest.raises(ValueError, match="has no \\[steps.search\\] table"):
        Space.from_recipe(recipes.validate({"name": "r", "steps": [{"kind": "train"}]}))


def test_from_bundled_recipe():
    space = Space.from_recipe("baseline")
    assert space.names == ("learning_rate", "batch_size") and space.targets["batch_size"] == (0, "batch_size")


def test_narrowed_spans_the_points_within_the_old_range():
    space = Space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "sparsity": {"low": 0.0, "high": 0.8,
                   "step": 0.1}, "bits": {"low": 2, "high": 8}, "batch_size": {"choices": [32, 64, 128]}})  # fmt: skip
    points = [
        {"learning_rate": 1e-3, "sparsity": 0.3, "bits": 4, "batch_size": 64},
        {"learning_rate": 4e-3, "sparsity": 0.5, "bits": 5, "batch_size": 64},
    ]
    narrow = space.narrowed(points, margin=0.1)
    lr = narrow.dimensions["learning_rate"]
    assert 1e-4 < lr.low < 1e-3 and 4e-3 < lr.high < 1e-1 and lr.log
    sp = narrow.dimensions["sparsity"]
    assert (round(sp.low, 6), round(sp.high, 6), sp.step) == (0.2, 0.6, 0.1)
    assert (narrow.dimensions["bits"].low, narrow.dimensions["bits"].high) == (3, 6)
    assert narrow.dimensions["batch_size"].choices == (64,)
    same = space.narrowed([points[0], points[0]])
    assert same.dimensions["learning_rate"] == space.dimensions["learning_rate"]
    with pytest.raises(ValueError, match="needs two or more points"):
        space.narrowed(points[:1])


def test_from_recipe_refuses_a_train_step_that_is_not_adam():
    r = recipes.validate({"name": "r", "steps": [
        {"kind": "train", "optimizer": "sgd", "search": {"learning_rate": {"low": 1e-3, "high": 1e-1}}}]})  # fmt: skip
    with pytest.raises(ValueError, match="trains with 'sgd'; a population trains AdamW"):
        Space.from_recipe(r)


def test_warmup_mixup_traced_and_schedule_bucketed():
    space = Space({"warmup_steps": {"low": 0, "high": 20}, "mixup": {"low": 0.0, "high": 0.4},
                   "schedule": {"choices": ["constant", "cosine"]}, "learning_rate": 1e-2})  # fmt: skip
    assert space.traced == ("mixup", "warmup_steps") and space.bucketed == ("schedule",)
    members = [{"warmup_steps": 5, "mixup": 0.2, "schedule": "cosine"}, {"warmup_steps": 0, "mixup": 0.0,
               "schedule": "cosine"}]  # fmt: skip
    hp = space.hparams(members)
    assert sorted(hp) == ["learning_rate", "mixup", "warmup_steps"]  # decay_steps: the runner's, from the steps
    np.testing.assert_array_equal(hp["warmup_steps"], [5.0, 0.0])
    np.testing.assert_array_equal(space.hparams(members, steps=lambda v: 40)["decay_steps"], [40.0, 40.0])
    constant = [{**m, "schedule": "constant"} for m in members]
    assert "decay_steps" not in space.hparams(constant, steps=lambda v: 40)
    assert space.bucket(members[0]) == (("schedule", "cosine"),)
    dists = space.distributions()
    assert isinstance(dists["warmup_steps"], optuna.distributions.IntDistribution)
    assert dists["schedule"].choices == ("constant", "cosine")
    assert Space({"schedule": {"choices": ["constant", "cosine"]}}).grid() == {"schedule": ["constant", "cosine"]}
    assert Space(space.to_dict()) == space
    assert Space({"mixup": {"low": 0.0, "high": 1.0}, "schedule": "cosine"}).fixed == {"schedule": "cosine"}


def test_from_recipe_warmup_means_cosine_and_zero_defaults_stay_out():
    r = recipes.validate({"name": "r", "steps": [{"kind": "train", "optimizer": "adamw", "search": {
        "warmup_steps": {"low": 0, "high": 50}, "mixup": {"low": 0.0, "high": 0.4}}}]})  # fmt: skip
    space = Space.from_recipe(r)
    assert space.names == ("mixup", "warmup_steps") and space.fixed["schedule"] == "cosine"
    plain = Space.from_recipe(recipes.validate({"name": "r", "steps": [{"kind": "train", "search": {
        "learning_rate": {"low": 1e-4, "high": 1e-2}}}]}))  # fmt: skip
    assert not {"warmup_steps", "mixup", "schedule"} & set(plain.fixed)


def test_width_is_a_structural_bucket():
    space = Space({"width": {"choices": [16, 32]}, "batch_size": 64, "learning_rate": {"low": 1e-3, "high": 1e-1}})
    assert space.bucketed == ("width",) and space.traced == ("learning_rate",)
    assert space.bucket({"width": 32, "learning_rate": 0.01}) == (("batch_size", 64), ("width", 32))
    assert "width" not in space.hparams([{"width": 32, "learning_rate": 0.01}])


def test_depth_and_activation_are_structural_buckets():
    space = Space({"depth": {"low": 1, "high": 3}, "activation": {"choices": ["relu", "gelu"]}, "width": 16,
                   "schedule": "cosine", "learning_rate": {"low": 1e-3, "high": 1e-1}})  # fmt: skip
    assert space.bucketed == ("depth", "activation") and space.dimensions["depth"].integer
    key = space.bucket({"depth": 2, "activation": "gelu", "learning_rate": 0.01})
    assert key == (("schedule", "cosine"), ("width", 16), ("depth", 2), ("activation", "gelu"))
    assert not {"depth", "activation"} & set(space.hparams([{"depth": 2, "activation": "gelu", "learning_rate": 0.01}]))
    assert Space({"depth": {"low": 1, "high": 3}}).grid() == {"depth": [1, 2, 3]}
    assert Space({"activation": "silu", "depth": {"choices": [1, 4]}}).fixed == {"activation": "silu"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"depth": {"choices": [0, 2]}}, "depth choices must each be an integer >= 1"),
        ({"depth": {"low": 1, "high": 2.5}}, "depth.high must be an integer >= 1"),
        ({"depth": 0, "learning_rate": {"low": 1e-3, "high": 1e-1}}, "depth must be a table or an integer >= 1"),
        ({"activation": {"choices": ["relu", "softmax"]}}, "activation choices must each be one of ('relu', 'gelu',"),
        (
            {"activation": {"low": 0, "high": 1}},
            "activation takes {choices = [...]} of ('relu', 'gelu', 'tanh', 'silu')",
        ),
    ],
)
def test_depth_and_activation_refused(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Space(spec)
