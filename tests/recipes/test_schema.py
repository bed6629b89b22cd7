"""The recipe schema: field checks, search spaces, the dict form and the context."""

import math

import pytest

from hamjax.recipes import REQUIRED, Context, Field, Recipe, RecipeError, Step, StepKind, validate


def test_field_check_converts_ints_for_floats_and_names_the_place():
    assert Field(float, 1e-3, above=0.0).check("steps[0].learning_rate", 1) == 1.0
    with pytest.raises(RecipeError, match=r"^steps\[0\]\.epochs must be int, got True \(bool\)$"):
        Field(int, 1).check("steps[0].epochs", True)
    with pytest.raises(RecipeError, match=r"^x must be a number, got nan$"):
        Field(float, 1.0).check("x", math.nan)
    with pytest.raises(RecipeError, match=r"^x must be one of \['a', 'b'\], got 'c'$"):
        Field(str, "a", choices=("a", "b")).check("x", "c")
    assert Field(int, 1, low=0, high=3).accepts(3) and not Field(int, 1, low=0, high=3).accepts(4)


def test_field_search_spaces():
    lr = Field(float, 1e-3, above=0.0)
    assert lr.check_search("s", {"low": 1e-4, "high": 1, "log": True}) == {"low": 1e-4, "high": 1.0, "log": True}
    assert Field(int, 64).check_search("s", {"choices": [32, 64]}) == {"choices": [32, 64]}
    with pytest.raises(RecipeError, match=r"^s must be \{choices = \[...\]\} with a non-empty list"):
        Field(int, 64).check_search("s", {"choices": []})
    with pytest.raises(RecipeError, match="needs low and high"):
        lr.check_search("s", {"low": 1e-4})
    with pytest.raises(RecipeError, match=r"^s\.log must be true or false"):
        lr.check_search("s", {"low": 1e-4, "high": 1e-2, "log": "yes"})


def test_required_fields_must_be_given():
    assert repr(REQUIRED) == "REQUIRED"
    kind = StepKind("needs-x", {"x": Field(int, REQUIRED)}, lambda f, c: c)
    from hamjax.recipes import registry

    with pytest.raises(RecipeError, match=r"steps\[0\]\.x is required for kind 'needs-x'"):
        registry._step("steps[0]", {"kind": "needs-x"}, {"needs-x": kind})


def test_to_dict_leaves_out_none_and_validates_back():
    r = validate({"name": "r", "steps": [{"kind": "train", "search": {"epochs": {"low": 1, "high": 4}}}]})
    d = r.to_dict()
    assert "patience" not in d["steps"][0] and d["steps"][0]["search"] == {"epochs": {"low": 1, "high": 4}}
    assert validate(d) == r
    assert Recipe("r", "", (Step("train", {"epochs": 1}),)).to_dict()["steps"] == [{"kind": "train", "epochs": 1}]


def test_context_checkpoint_dir_is_one_folder_per_row(tmp_path):
    ctx = Context(lambda p, x: x, {}, None, workdir=str(tmp_path))
    assert ctx.checkpoint_dir("dense") == str(tmp_path / "checkpoints-0-dense")
    ctx.stages.append(object())
    assert ctx.checkpoint_dir("pruned") == str(tmp_path / "checkpoints-1-pruned")
    assert Context(lambda p, x: x, {}, None).checkpoint_dir("dense") is None
