"""Recipes on disk: the bundled ones, loading by name or path, saving."""

import pytest

from hamjax import recipes
from hamjax.recipes import RecipeError


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


def test_dumps_is_toml_that_validates_back():
    import tomllib

    r = recipes.load("default")
    assert recipes.validate(tomllib.loads(recipes.dumps(r))) == r


def test_save_refuses_another_suffix(tmp_path):
    with pytest.raises(RecipeError, match=r"save: recipe path must end in \.toml"):
        recipes.save(recipes.load("baseline"), tmp_path / "r.json")


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


def test_a_user_file_with_the_old_quantize_field_names_is_told_the_new_ones(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text('name = "old"\n[[steps]]\nkind = "quantize"\nmode = "static"\nmethod = "mse"\n')
    with pytest.raises(
        RecipeError,
        match=r"old.toml: steps\[0\]\.mode = 'static': this field of 'quantize' is now called method; "
        r"the former method field is now calibration_method",
    ):
        recipes.load(old)


def test_a_recipe_file_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('name = "caf\u00e9"\n[[steps]]\nkind = "train"\n'.encode("latin-1"))
    with pytest.raises(RecipeError, match=r"latin1\.toml: not UTF-8 text \(byte 11: .*\); save the recipe as UTF-8"):
        recipes.load(bad)
