import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import hamjax
from hamjax import cli


def test_optimize_on_digits_writes_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["optimize", "--model", "mlp", "--data", "digits", "--out", str(out), "--quiet", "--seed", "1"])
    assert rc == 0
    payload = json.loads((out / "report.json").read_text())
    dense, distilled, pruned, int8, onnx_fp32, onnx_int8 = payload["stages"]
    assert dense["name"] == "dense" and dense["accuracy"] > 0.9
    assert dense["params"] == 64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    # a student with about a quarter of the parameters, distilled from the dense model
    assert distilled["name"] == "distilled" and 0.2 < distilled["params"] / dense["params"] < 0.3
    assert distilled["accuracy"] > dense["accuracy"] - 0.05
    # the default recipe removes half of the hidden neurons and shrinks the model
    assert pruned["name"] == "pruned" and pruned["params"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert pruned["accuracy"] > dense["accuracy"] - 0.03
    # then quantizes the shrunk model to static int8: about 4x fewer bytes, no JAX speed column
    assert int8["name"] == "int8" and int8["params"] == pruned["params"]
    assert int8["size_bytes"] < pruned["size_bytes"] / 3.5
    assert int8["accuracy"] > pruned["accuracy"] - 0.01
    assert int8["latency"] is None and int8["throughput"] == []
    # and exports the shrunk model and its int8 model to ONNX, measured in onnxruntime
    assert onnx_fp32["name"] == "onnx fp32" and abs(onnx_fp32["accuracy"] - pruned["accuracy"]) < 0.002
    assert onnx_int8["name"] == "onnx int8" and abs(onnx_int8["accuracy"] - int8["accuracy"]) < 0.01
    assert onnx_int8["size_bytes"] < onnx_fp32["size_bytes"] / 3
    assert onnx_fp32["latency"] is not None and onnx_int8["throughput"]
    assert (out / "export" / "model.fp32.onnx").exists() and (out / "export" / "model.int8.onnx").exists()
    assert payload["meta"]["recipe"] == "default" and payload["meta"]["seed"] == 1
    printed = capsys.readouterr().out
    for col in ("stage", "params", "size MB", "test accuracy"):
        assert col in printed
    assert "report.md" in printed and "saved the trained model" in printed

    # hamjax export reads the saved dense model back and writes a checked int8 file
    onnx_path = tmp_path / "dense.int8.onnx"
    assert cli.main(["export", str(out / "model"), "--precision", "int8", "--out", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert onnx_path.exists() and "argmax agreement" in printed and "QGemm" in printed


def test_export_a_reference_model_by_name(tmp_path, capsys):
    path = tmp_path / "cnn.onnx"
    argv = ["export", "cnn", "--data", "digits", "--out", str(path), "--static-batch"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "untrained cnn" in printed and "max relative error" in printed
    from hamjax.export import runtime

    assert runtime.Session(path).static_batch == 64


def test_export_refuses_what_is_not_a_model(tmp_path, capsys):
    assert cli.main(["export", "resnet", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "neither a reference model" in err and "\n" not in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["optimize", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["optimize", "--seed", "x"], "invalid int value"),
        (["frobnicate"], "invalid choice"),
        (["search", "--objectives", "accuracy,flops"], "objective 'flops' is not one of"),
        (["search", "--objectives", "params,latency"], "objectives must include 'accuracy'"),
        (["search", "--selection", "nsga"], "invalid choice: 'nsga'"),
        (["search", "--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    ],
)
def test_bad_arguments_are_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_search_passes_objectives_selection_and_sampler(tmp_path, monkeypatch, capsys):
    from hamjax.search import engine

    seen = []

    def run(supernet, dataset, config, **kw):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run", run)
    argv = ["search", "--data", "digits", "--out", str(tmp_path), "--quiet", "--objectives", "latency,accuracy"]
    assert cli.main([*argv, "--selection", "pareto", "--sampler", "gp"]) == 130
    assert seen[0].objectives == ("accuracy", "latency") and (seen[0].selection, seen[0].sampler) == ("pareto", "gp")
    assert "interrupted" in capsys.readouterr().err
    if importlib.util.find_spec("torch") is None:  # the Bayesian strategy refuses the GP sampler before any data
        assert cli.main(["search", "--strategy", "bayesian", "--sampler", "gp", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "needs torch" in err and "\n" not in err and len(seen) == 1


def test_search_tables_show_latency_when_measured(capsys):
    from hamjax.search import engine

    c = engine.Candidate(0, {}, 0.5, 1234, "depth 1: dense/8/relu")
    cli._print_candidates("t", [c])
    assert "latency" not in capsys.readouterr().out
    cli._print_candidates("t", [c, dataclasses.replace(c, latency_ms=0.123)])
    out = capsys.readouterr().out
    assert "latency p50 @1 (ms)" in out and "0.123" in out


def test_bad_recipe_is_one_line_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[steps]]\nkind = "train"\nepochs = 0\n')
    assert cli.main(["optimize", "--recipe", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "steps[0].epochs must be >= 1" in err and "Traceback" not in err and "\n" not in err


def test_recipes_lists_and_checks(capsys):
    assert cli.main(["recipes", "--fields"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "learning_rate" in out


def test_console_script_help():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.path.dirname(os.path.dirname(hamjax.__file__))}
    r = subprocess.run(
        [sys.executable, "-m", "hamjax.cli", "optimize", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0 and "--recipe" in r.stdout and "--model" in r.stdout
