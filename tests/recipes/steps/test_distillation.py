import pytest

import hamjax
from hamjax import models
from hamjax.recipes import Context, RecipeError, run, validate

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits():
    return hamjax.data.load("digits")


def _accuracy(apply_fn, params, split):
    return hamjax.train.evaluate(apply_fn, params, split)["accuracy"]


def _recipe(**fields):
    return validate(
        {
            "name": "t",
            "steps": [
                {"kind": "train", "epochs": 10, "learning_rate": 1e-2},
                {"kind": "distill", "epochs": 5, "learning_rate": 1e-2, "param_ratio": 0.25, **fields},
            ],
        }
    )


def test_recipe_step_adds_a_distilled_row_with_a_quarter_of_the_params(digits):
    module = models.build("mlp", input_shape=SHAPE)
    apply_fn, params = hamjax.functional(module)
    context = Context(apply_fn, params, digits, progress=False, config=models.config_of(module))
    context = run(_recipe(relational=1.0), context)
    dense, distilled = context.stages
    assert distilled.name == "distilled"
    ratio = hamjax.measure.param_count(distilled.params) / hamjax.measure.param_count(dense.params)
    assert 0.2 < ratio < 0.3
    assert context.params is distilled.params  # later steps work on the student
    assert _accuracy(context.apply_fn, context.params, digits.test) > 0.85


def test_recipe_step_can_go_on_with_the_teacher_and_needs_a_reference_model(digits):
    module = models.build("mlp", input_shape=SHAPE)
    apply_fn, params = hamjax.functional(module)
    context = run(
        _recipe(continue_with="teacher"),
        Context(apply_fn, params, digits, progress=False, config=models.config_of(module)),
    )
    assert context.params is context.stages[0].params
    match = r"^distill \(param_ratio=0.25, student='config'\) needs a hamjax reference model"
    with pytest.raises(RecipeError, match=match):
        run(_recipe(student="config"), Context(apply_fn, params, digits, progress=False))


@pytest.mark.parametrize("student", ["inherit", "fresh"])
def test_a_custom_model_gets_a_student_from_its_channel_groups(digits, student):
    apply_fn, params = hamjax.functional(models.build("mlp", input_shape=SHAPE))  # no config passed: custom
    context = run(_recipe(student=student), Context(apply_fn, params, digits, progress=False))
    dense, distilled = context.stages
    ratio = hamjax.measure.param_count(distilled.params) / hamjax.measure.param_count(dense.params)
    assert 0.15 < ratio <= 0.25 and context.config is None
    assert f"{student} through its channel groups" in distilled.notes
    assert _accuracy(context.apply_fn, context.params, digits.test) > 0.8


def test_a_shrunk_vit_has_no_student_config(digits):
    shrunk = hamjax.prune.ShrunkConfig(
        models.ViTConfig(num_layers=2), heads=(2, 4), mlp_hidden=(64, 128), token_hidden=(0, 0)
    )
    context = Context(lambda p, x: x, {}, digits, progress=False, config=shrunk)
    with pytest.raises(RecipeError, match=r"^distill \(param_ratio=0.25\) cannot build a student of this model"):
        run(validate({"name": "t", "steps": [{"kind": "distill"}]}), context)


def test_function_matching_fields_reach_the_student_and_the_report_row(digits):
    module = models.build("mlp", input_shape=SHAPE)
    apply_fn, params = hamjax.functional(module)
    recipe = validate(
        {
            "name": "t",
            "steps": [
                {
                    "kind": "distill",
                    "epochs": 1,
                    "augment": "shift=1, cutout=2",
                    "mixup": 0.2,
                    "teacher_method": "dropout",
                    "teacher_noise": 0.05,
                }
            ],
        }
    )
    context = run(recipe, Context(apply_fn, params, digits, progress=False, config=models.config_of(module)))
    notes = context.stages[-1].notes
    assert notes.endswith("; augment shift=1,cutout=2, mixup 0.2, dropout teacher, teacher noise 0.05"), notes


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"augment": "spin=3"}, "steps[0]: augment: parse('spin=3'): "),
        ({"augment": "rotate=270"}, "steps[0]: augment: parse('rotate=270'): rotate must be"),
        ({"mixup": -0.1}, "steps[0].mixup"),
        ({"teacher_method": "train"}, "steps[0].teacher_method"),
        ({"teacher_noise": -1.0}, "steps[0].teacher_noise"),
    ],
)
def test_bad_function_matching_fields_are_refused_when_the_recipe_loads(fields, message):
    with pytest.raises(RecipeError) as info:
        validate({"name": "t", "steps": [{"kind": "distill", **fields}]})
    assert message in str(info.value)
