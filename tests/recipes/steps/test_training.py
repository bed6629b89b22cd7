"""The ``train`` recipe step."""

import re

import pytest

import hamjax
from hamjax import recipes
from hamjax.recipes.steps import training


def test_fields_are_the_train_config_and_the_row_name():
    r = recipes.validate({"name": "r", "steps": [{"kind": "train"}]})
    params = dict(r.steps[0].params)
    assert params.pop("stage") == "dense"
    hamjax.TrainConfig(**params)  # every other field is a TrainConfig field
    assert training.FIELDS["optimizer"].choices == hamjax.train.OPTIMIZERS


def test_the_first_train_step_is_kept_as_the_dense_model(digits, tmp_path):
    module = hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10))
    apply_fn, params = hamjax.functional(module)
    config = hamjax.models.config_of(module)
    r = recipes.validate(
        {
            "name": "r",
            "steps": [
                {"kind": "train", "epochs": 2, "learning_rate": 3e-3},
                {"kind": "train", "epochs": 1, "stage": "again"},
            ],
        }
    )
    ctx = recipes.Context(apply_fn, params, digits, progress=False, config=config, workdir=str(tmp_path))
    ctx = recipes.run(r, ctx)
    dense, again = ctx.stages
    assert (dense.name, again.name) == ("dense", "again")
    kept_fn, kept_params, kept_config = ctx.extras["dense"]
    assert kept_fn is apply_fn and kept_params is dense.params and kept_config == config
    assert ctx.params is again.params
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints-0-dense", "checkpoints-1-again"]


def test_regularisation_fields_reach_fit_and_the_report_row_says_what_ran(digits, tmp_path):
    module = hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10))
    apply_fn, params = hamjax.functional(module)
    step = {"kind": "train", "epochs": 1, "augment": "shift=1", "label_smoothing": 0.1, "l2": 1e-4, "accumulate": 2}
    r = recipes.validate({"name": "r", "steps": [step]})
    ctx = recipes.run(r, recipes.Context(apply_fn, params, digits, progress=False, workdir=str(tmp_path)))
    notes = ctx.stages[0].notes
    assert "augment shift=1" in notes and "label smoothing 0.1" in notes and "L2 0.0001" in notes
    assert "accumulate 2" in notes


@pytest.mark.parametrize(
    "fields, phrase",
    [
        ({"label_smoothing": 1.0}, "label_smoothing must be < 1"),
        ({"drop_connect": 1.5}, "drop_connect must be < 1"),
        ({"adversarial": "pgd"}, "needs epsilon > 0"),
        ({"augment": "warp=3"}, "augment = 'warp=3'"),
        ({"mixup": -1.0}, "mixup"),
        ({"accumulate": 0}, "accumulate"),
        ({"adversarial": "deepfool", "epsilon": 0.1}, "adversarial"),
    ],
)
def test_bad_regularisation_fields_are_refused_when_the_recipe_loads(fields, phrase):
    with pytest.raises(recipes.RecipeError, match=re.escape(phrase)):
        recipes.validate({"name": "r", "steps": [{"kind": "train", **fields}]})
