"""The recipe schema: field checks, search spaces, the dict form and the context."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from hamjax.recipes import REQUIRED, Context, Field, Recipe, RecipeError, Step, StepKind, step_kinds, validate
from hamjax.recipes.schema import check_slug


def test_field_check_converts_ints_for_floats_and_names_the_place():
    assert Field(float, 1e-3, above=0.0).check("steps[0].learning_rate", 1) == 1.0
    with pytest.raises(RecipeError, match=r"^steps\[0\]\.epochs must be int, got True \(bool\)$"):
        Field(int, 1).check("steps[0].epochs", True)
    with pytest.raises(RecipeError, match=r"^x must be a finite number, got nan$"):
        Field(float, 1.0).check("x", math.nan)
    with pytest.raises(RecipeError, match=r"^x must be a finite number, got inf$"):
        Field(float, 1.0).check("x", math.inf)
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


@pytest.mark.parametrize("stage", ["dense", "int8 qat", "onnx fp32", "v1.2_b-c+d", "X9"])
def test_a_safe_stage_name_is_accepted(stage):
    assert check_slug("steps[0].stage", stage) == stage
    assert validate({"name": "r", "steps": [{"kind": "train", "stage": stage}]}).steps[0].params["stage"] == stage


@pytest.mark.parametrize(
    "stage",
    ["../x", "x/../../../escape", "a/b", "a\\b", "..", "a..b", ".hidden", " lead", "", "a\x00b", "é", "x" * 101],
)
def test_a_stage_name_that_is_not_a_slug_is_refused_naming_the_field(stage):
    with pytest.raises(RecipeError, match=r"steps\[1\]\.stage must be a name of letters, digits"):
        validate({"name": "r", "steps": [{"kind": "train"}, {"kind": "prune", "stage": stage}]})
    with pytest.raises(RecipeError, match=r"steps\[0\]\.search\.stage\.choices must be a name"):
        validate({"name": "r", "steps": [{"kind": "train", "search": {"stage": {"choices": ["ok", stage]}}}]})


def test_every_step_kind_with_a_stage_field_checks_it_as_a_slug():
    for name, kind in step_kinds().items():
        if "stage" in kind.fields:
            assert kind.fields["stage"].slug, name
    kind = StepKind("third-party", {"stage": Field(str, "mine")}, lambda fields, context: context)
    assert kind.fields["stage"].slug
    assert not kind.fields["stage"].accepts("../mine")


def test_context_checkpoint_dir_stays_inside_the_work_directory(tmp_path):
    ctx = Context(lambda p, x: x, {}, None, workdir=str(tmp_path / "run"))
    with pytest.raises(RecipeError, match=r"checkpoint_dir: stage must be a name.*got '\.\./x'"):
        ctx.checkpoint_dir("../x")
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run" / "checkpoints-0-dense").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(
        RecipeError,
        match="recipes.run: the checkpoints of stage 'dense' would go to .*elsewhere, outside the output directory",
    ):
        ctx.checkpoint_dir("dense")
    ctx.stages.append(object())
    assert ctx.checkpoint_dir("dense") == str(tmp_path / "run" / "checkpoints-1-dense")
    (tmp_path / "run" / "export").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RecipeError, match="the ONNX files would go to .*elsewhere"):
        ctx.path("export", "the ONNX files")
    (tmp_path / "run" / "up").symlink_to(tmp_path / "run")
    with pytest.raises(RecipeError, match="would go to .*run, outside"):
        ctx.path("up", "x")


def test_context_records_only_resumed_training():
    ctx = Context(lambda p, x: x, {}, None)
    ctx.note_resumed("dense", SimpleNamespace(resumed_from=None))
    assert ctx.resumed == {}
    ctx.note_resumed("dense", SimpleNamespace(resumed_from=np.int64(7)))
    assert ctx.resumed == {"dense": 7} and type(ctx.resumed["dense"]) is int


def test_recipes_check_refuses_a_stage_that_climbs_out(tmp_path, capsys):
    from hamjax import cli

    bad = tmp_path / "escape.toml"
    bad.write_text('name = "escape"\n[[steps]]\nkind = "train"\nstage = "../x"\n')
    assert cli.main(["recipes", "--check", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "escape.toml: steps[0].stage must be a name" in err and "'../x'" in err
