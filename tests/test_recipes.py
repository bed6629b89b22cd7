import pytest

from hamjax import recipes
from hamjax.recipes import RecipeError


def _raw(**step):
    return {"name": "r", "steps": [{"kind": "train", **step}]}


def test_bundled_baseline_loads_with_defaults_and_search_space():
    assert "baseline" in recipes.available()
    r = recipes.load("baseline")
    step = r.steps[0]
    assert step.kind == "train" and step.params["epochs"] == 15 and step.params["optimizer"] == "adam"
    assert step.params["warmup_steps"] == 0  # default filled in
    assert step.search["learning_rate"] == {"low": 1e-4, "high": 1e-2, "log": True}
    assert step.search["batch_size"]["choices"] == [64, 128, 256]


def test_every_bundled_recipe_validates():
    for name in recipes.available():
        assert recipes.load(name).name == name


def test_save_then_load_round_trips(tmp_path):
    r = recipes.load("baseline")
    path = recipes.save(r, tmp_path / "sub" / "copy.toml")
    assert recipes.load(path) == r
    assert not list((tmp_path / "sub").glob(".*tmp*"))


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


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*baseline"):
        recipes.load("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(RecipeError, match="bad.toml: not valid TOML"):
        recipes.load(bad)
    bad.write_text('name = "x"\n[[steps]]\nkind = "train"\nbatch_size = -1\n')
    with pytest.raises(RecipeError, match=r"bad.toml: steps\[0\]\.batch_size must be >= 1, got -1"):
        recipes.load(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        recipes.load(tmp_path / "missing.toml")


def test_int_is_accepted_for_float_fields():
    r = recipes.validate(_raw(learning_rate=1))
    assert r.steps[0].params["learning_rate"] == 1.0 and isinstance(r.steps[0].params["learning_rate"], float)


def test_register_step_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        recipes.register_step("train", {}, lambda p, c: c)


def test_run_trains_and_records_a_stage(digits):
    import hamjax

    apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
    r = recipes.validate(_raw(epochs=3, stage="trained"))
    ctx = recipes.run(r, recipes.Context(apply_fn, params, digits, progress=False))
    assert [s.name for s in ctx.stages] == ["trained"]
    acc = hamjax.train.evaluate(apply_fn, ctx.params, digits.test)["accuracy"]
    assert acc > 0.85
