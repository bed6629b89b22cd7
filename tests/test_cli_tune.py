"""``hamjax tune``: a small study end to end, its files, resuming, and one-line errors."""

import optuna
import pytest

from hamjax import cli, recipes


def _tune(tmp_path, *extra):
    argv = ["tune", "--trials", "4", "--batch", "2", "--epochs", "1", "--out", str(tmp_path / "t"), "--quiet"]
    return cli.main([*argv, "--execution", "vmap", *extra])


@pytest.mark.slow
def test_a_small_study_writes_the_table_the_recipe_and_plots_and_resumes(tmp_path, capsys):
    assert _tune(tmp_path) == 0
    out = capsys.readouterr().out
    assert "hamjax tune: best of 4 trials (4 complete)" in out and "learning_rate" in out
    for name in ("best.toml", "history.png", "importances.png", "tune.db"):
        assert (tmp_path / "t" / name).stat().st_size > 0, name
    recipe = recipes.load(str(tmp_path / "t" / "best.toml"))
    assert [s.kind for s in recipe.steps] == ["train"]
    storage = f"sqlite:///{tmp_path / 't' / 'tune.db'}"
    study = optuna.load_study(study_name="hamjax-tune", storage=storage)
    assert len(study.trials) == 4
    assert _tune(tmp_path, "--trials", "6") == 0  # the same study goes on to a budget of 6
    assert len(optuna.load_study(study_name="hamjax-tune", storage=storage).trials) == 6


def test_a_space_file_and_two_objectives_give_a_pareto_plot(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text(
        "learning_rate = {low = 1e-3, high = 3e-2, log = true}\nlabel_smoothing = {low = 0.0, high = 0.1}\n"
    )
    assert _tune(tmp_path, "--space", str(space), "--objectives", "accuracy,size") == 0
    assert (tmp_path / "t" / "pareto.png").exists()
    assert "weight_decay" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--space", "x.toml", "--recipe", "default"], "tune: give --space or --recipe, not both"),
        (["--space", "missing.toml"], "tune: --space missing.toml:"),
        (["--pruner", "median", "--objectives", "accuracy,size"], "needs one objective"),
        (["--batch", "9"], "batch"),
    ],
)
def test_bad_tune_arguments_are_one_line(tmp_path, capsys, extra, match):
    assert _tune(tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hamjax tune: error: ") and match in err and "\n" not in err, err


def test_an_unknown_sampler_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["tune", "--sampler", "anneal"])
    assert exc.value.code == 2 and "invalid choice: 'anneal'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_width_tunes_a_reference_model_of_that_width(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text("learning_rate = {low = 1e-3, high = 3e-2, log = true}\nwidth = 16\n")
    assert _tune(tmp_path, "--space", str(space)) == 0
    assert "width = 16" in recipes.load(str(tmp_path / "t" / "best.toml")).description


def test_a_width_needs_a_reference_model(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text("learning_rate = {low = 1e-3, high = 3e-2, log = true}\nwidth = {choices = [8, 16]}\n")
    assert _tune(tmp_path, "--space", str(space), "--model", "hamjax.models:build") == 2
    assert "tune: a width, depth or activation needs a reference model" in capsys.readouterr().err


@pytest.mark.slow
def test_a_depth_and_activation_space_tunes_reference_mlps(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text('learning_rate = 0.03\nwidth = 8\ndepth = {choices = [1, 2]}\nactivation = "tanh"\n')
    assert _tune(tmp_path, "--space", str(space), "--sampler", "grid") == 0
    out = capsys.readouterr().out
    assert "(2 complete)" in out and "depth" in out
    assert "activation = tanh" in recipes.load(str(tmp_path / "t" / "best.toml")).description
    study = optuna.load_study(study_name="hamjax-tune", storage=f"sqlite:///{tmp_path / 't' / 'tune.db'}")
    assert sorted(t.params["depth"] for t in study.trials) == [1, 2] and all(t.value > 0.1 for t in study.trials)


def test_an_activation_needs_the_reference_mlp(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text('depth = {choices = [1, 2]}\nactivation = {choices = ["relu", "gelu"]}\n')
    assert _tune(tmp_path, "--space", str(space), "--model", "cnn") == 2
    assert "reference model 'cnn' has no activation to choose" in capsys.readouterr().err
