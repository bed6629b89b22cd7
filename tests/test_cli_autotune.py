"""``hamjax autotune``: its help, one-line errors, and a run on a custom model writing every output."""

import json

import pytest

from hamjax import cli, cli_autotune, recipes
from hamjax.autotune import KnowledgeBase

MODEL = """
import jax
import jax.numpy as jnp


def build():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (64, 32)) / 8.0, "b1": jnp.zeros(32),
              "w2": jax.random.normal(k2, (32, 10)) / 6.0, "b2": jnp.zeros(10)}

    def apply_fn(p, x):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None])
        return h @ p["w2"] + p["b2"][None]

    return apply_fn, params, jnp.zeros((2, 8, 8, 1))
"""


def _main(*argv):
    try:
        return cli.main(list(argv))
    except SystemExit as exit_info:  # argparse: --help and bad choices
        return exit_info.code


def test_help_lists_the_constraints_weights_strategies_and_knowledge_base(capsys):
    assert _main("autotune", "--help") == 0
    out = capsys.readouterr().out
    for option in ("--max-drop", "--min-size-reduction", "--weights", "--budget", "--strategy", "--knowledge"):
        assert option in out, option


@pytest.fixture
def untrained(monkeypatch):
    """``trained_model`` never trains here: a bad argument must be refused whatever the model."""
    calls = []

    def fake(args, dataset, out):
        calls.append(args.model)
        raise AssertionError("trained a model before refusing a bad argument")

    monkeypatch.setattr(cli_autotune, "trained_model", fake)
    return calls


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--weights", "speed=-1"], "Weights: speed must be a finite number >= 0, got -1.0"),
        (["--weights", "speed=0,memory=0,accuracy=0"], "must not all be zero"),
        (["--max-drop", "-1"], "Constraints: max_accuracy_drop"),
        (["--min-size-reduction", "0.5"], "Constraints: min_size_reduction"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_any_training(tmp_path, capsys, untrained, argv, phrase):
    assert _main("autotune", "--out", str(tmp_path / "a"), "--knowledge", "none", "--quiet", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hamjax autotune: error: ") and phrase in err and "\n" not in err, err
    assert untrained == []


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--weights", "colour=1"], "invalid weight 'colour=1'"),
        (["--weights", "speed=fast"], "'fast' is not a number"),
        (["--strategy", "greedy"], "invalid choice: 'greedy'"),
        (["--selection", "elitist"], "invalid choice: 'elitist'"),
    ],
)
def test_arguments_the_parser_refuses_exit_2(capsys, argv, phrase):
    assert _main("autotune", *argv) == 2
    assert phrase in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--budget", "0"), "hamjax autotune: error: --budget must be an integer >= 1, got 0"),
        (("--seconds", "0"), "hamjax autotune: error: --seconds must be a finite number > 0, got 0.0"),
    ],
)
def test_a_budget_below_one_is_refused_before_training(untrained, tmp_path, capsys, argv, message):
    assert _main("autotune", *argv, "--out", str(tmp_path / "b"), "--knowledge", "none", "--quiet") == 2
    assert capsys.readouterr().err.strip() == message
    assert untrained == []


@pytest.mark.slow
def test_a_custom_model_is_trained_autotuned_and_every_output_written(tmp_path, capsys, monkeypatch):
    (tmp_path / "tinymodel.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)  # --model package.module:function imports from the working directory
    out, kb = tmp_path / "out", tmp_path / "kb.db"
    argv = ["autotune", "--model", "tinymodel:build", "--data", "digits", "--out", str(out), "--quiet"]
    argv += ["--max-drop", "2.0", "--min-size-reduction", "1.5", "--budget", "1", "--knowledge", f"sqlite:///{kb}"]
    assert _main(*argv) == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    assert f"wrote {out / 'recipe.toml'}" in printed
    recipe = recipes.load(str(out / "recipe.toml"))
    assert recipe.steps[-1].kind == "export" and all(s.kind != "train" for s in recipe.steps)
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["feasible"] is True and report["meta"]["unmet"] == []
    assert report["meta"]["model"] == "tinymodel:build" and report["meta"]["evaluations"]["full"] == 1
    decisions = (out / "decisions.txt").read_text().splitlines()
    assert decisions[0].startswith("model: family mlp") and decisions[-1].startswith("chosen ")
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base = KnowledgeBase(f"sqlite:///{kb}")
    assert len(base.records()) == report["meta"]["knowledge"]["added"] == 1
