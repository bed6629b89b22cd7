"""Validating recipes against the step kinds, third-party kinds, and running a recipe."""

import ast
from pathlib import Path

import pytest

from hamjax import recipes
from hamjax.recipes import RecipeError
from hamjax.recipes.steps import BUILTIN


def _raw(**step):
    return {"name": "r", "steps": [{"kind": "train", **step}]}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_raw(epochs=0), r"steps\[0\]\.epochs must be >= 1, got 0"),
        (_raw(epochs=2.5), r"steps\[0\]\.epochs must be int"),
        (_raw(epochs=True), r"steps\[0\]\.epochs must be int"),
        (_raw(learning_rate=0.0), r"steps\[0\]\.learning_rate must be > 0"),
        (_raw(optimizer="lbfgs"), r"steps\[0\]\.optimizer must be one of"),
        (_raw(epoch=3), r"unknown field\(s\) \['epoch'\]"),
        (_raw(search={"momentum": {"low": 0, "high": 1}}), r"search\.momentum: no such field"),
        (_raw(search={"learning_rate": {"low": 1e-2, "high": 1e-4}}), "low must be < high"),
        (_raw(search={"weight_decay": {"low": 0.0, "high": 1.0, "log": True}}), "log scale needs low > 0"),
        (_raw(search={"learning_rate": {"low": 0.0, "high": 1.0}}), r"learning_rate\.low must be > 0"),
        (_raw(search={"optimizer": {"low": 0, "high": 1}}), "searched with choices"),
        (_raw(search={"optimizer": {"choices": ["adam", "nope"]}}), "must be one of"),
        ({"name": "r", "steps": [{"kind": "quantum"}]}, r"steps\[0\]\.kind must be one of"),
        ({"name": "r", "steps": []}, "non-empty list"),
        ({"name": "", "steps": [{"kind": "train"}]}, "recipe.name"),
        ({"name": "r", "steps": [{"kind": "train"}], "colour": 1}, "unknown top-level"),
    ],
)
def test_validation_names_the_bad_field(raw, match):
    with pytest.raises(RecipeError, match=match):
        recipes.validate(raw)


def test_int_is_accepted_for_float_fields():
    r = recipes.validate(_raw(learning_rate=1))
    assert r.steps[0].params["learning_rate"] == 1.0 and isinstance(r.steps[0].params["learning_rate"], float)


def test_register_step_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        recipes.register_step("train", {}, lambda p, c: c)


def test_a_registered_step_validates_and_runs_beside_the_builtin_ones():
    seen = []

    def run(fields, context):
        seen.append(fields["times"])
        return context

    kind = recipes.register_step(
        "count-test", {"times": recipes.Field(int, 1, low=1)}, run, doc="counts", reference=lambda f: None
    )
    assert recipes.step_kinds()["count-test"] is kind and "count-test" not in BUILTIN
    with pytest.raises(ValueError, match="'count-test' is already registered"):
        recipes.register_step("count-test", {}, run)
    r = recipes.validate({"name": "r", "steps": [{"kind": "count-test", "times": 3}]})
    recipes.run(r, recipes.Context(None, None, None))
    assert seen == [3] and recipes.reference_steps(r) == []


def test_builtin_kinds_are_the_step_modules_and_nothing_registers_on_import():
    assert list(BUILTIN) == [
        "train",
        "prune",
        "distill",
        "lowrank",
        "fold",
        "fuse",
        "merge",
        "quantize",
        "precision",
        "export",
    ]
    assert all(kind.name == name for name, kind in BUILTIN.items())
    steps = Path(recipes.__file__).parent / "steps"
    for path in steps.glob("*.py"):
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
        assert not any(getattr(c.func, "id", getattr(c.func, "attr", None)) == "register_step" for c in calls), path


def test_renamed_fields_give_the_new_name():
    step = {"kind": "quantize", "mode": "dynamic"}
    with pytest.raises(
        RecipeError, match=r"steps\[0\]\.mode = 'dynamic': this field of 'quantize' is now called method"
    ):
        recipes.validate({"name": "r", "steps": [step]})
    step = {"kind": "quantize", "method": "percentile"}  # a calibration method under the field's old name
    with pytest.raises(
        RecipeError,
        match=r"steps\[0\]\.method = 'percentile': this field of 'quantize' is now called calibration_method",
    ):
        recipes.validate({"name": "r", "steps": [step]})
    r = recipes.validate({"name": "r", "steps": [{"kind": "quantize", "method": "dynamic"}]})
    assert r.steps[0].params["method"] == "dynamic" and r.steps[0].params["calibration_method"] == "mse"
    with pytest.raises(RecipeError, match=r"steps\[0\]\.method must be one of"):
        recipes.validate({"name": "r", "steps": [{"kind": "quantize", "method": "fp4"}]})


def test_reference_steps_name_index_kind_and_field():
    assert recipes.reference_steps(recipes.load("default")) == []  # students and shrink work on any model
    config = recipes.validate({"name": "r", "steps": [{"kind": "train"}, {"kind": "distill", "student": "config"}]})
    assert recipes.reference_steps(config) == ["steps[1] (distill, param_ratio=0.25, student='config')"]
    assert recipes.reference_steps(recipes.load("magnitude-90")) == []


def test_run_trains_and_records_a_stage(digits):
    import hamjax

    apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
    r = recipes.validate(_raw(epochs=3, stage="trained"))
    ctx = recipes.run(r, recipes.Context(apply_fn, params, digits, progress=False))
    assert [s.name for s in ctx.stages] == ["trained"]
    acc = hamjax.train.evaluate(apply_fn, ctx.params, digits.test)["accuracy"]
    assert acc > 0.85
