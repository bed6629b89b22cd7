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
    # one chain that compounds: a student with 60% of the parameters, distilled from the dense model...
    assert distilled["name"] == "distilled" and 0.55 < distilled["params"] / dense["params"] < 0.65
    assert distilled["accuracy"] > dense["accuracy"] - 0.02
    # ...then 65% of the student's hidden neurons removed and the student shrunk
    from hamjax.models import MLPConfig, make_student, param_count, saved

    student = make_student(MLPConfig(sizes=(64, 512, 512, 10)), param_ratio=0.6)
    _, _, final_config, _ = saved.load(out / "model")
    assert all(abs(f - 0.35 * s) <= 1 for f, s in zip(final_config.sizes[1:-1], student.sizes[1:-1], strict=True))
    assert pruned["name"] == "pruned" and pruned["params"] == param_count(final_config)
    assert pruned["accuracy"] > dense["accuracy"] - 0.01
    # then quantizes the shrunk student to static int8: about 4x fewer bytes, no JAX speed column
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
    assert "report.md" in printed and f"saved the dense model to {out / 'dense'}" in printed
    assert f"saved the pruned model to {out / 'model'}" in printed
    assert payload["meta"]["final_stage"] == "pruned" and payload["meta"]["model"] == "mlp"
    # OUT/model is the final float model (the shrunk student) with its int8 ONNX file; OUT/dense the dense one
    _, _, dense_config, _ = saved.load(out / "dense")
    assert dense_config.sizes == (64, 512, 512, 10)
    assert _ratios(payload)["size"] >= 16  # the compounded chain, as on MNIST
    assert (out / "model" / "model.int8.onnx").read_bytes() == (out / "export" / "model.int8.onnx").read_bytes()

    # hamjax export reads the saved final model back and writes a checked int8 file
    onnx_path = tmp_path / "dense.int8.onnx"
    assert cli.main(["export", str(out / "model"), "--precision", "int8", "--out", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert onnx_path.exists() and "argmax agreement" in printed and "QGemm" in printed


def _ratios(payload: dict) -> dict:
    """The acceptance figures of a report: the final onnx int8 stage against the dense fp32 one."""
    stages = {s["name"]: s for s in payload["stages"]}
    dense, final = stages["dense"], stages["onnx int8"]
    speed = {s["name"]: s["throughput"][0]["samples_per_s"] for s in (dense, final)}
    assert dense["throughput"][0]["batch_size"] == final["throughput"][0]["batch_size"] == 256
    return {
        "size": dense["size_bytes"] / final["size_bytes"],
        "throughput": speed["onnx int8"] / speed["dense"],
        "accuracy_points": 100 * (final["accuracy"] - dense["accuracy"]),
    }


@pytest.mark.slow
def test_default_optimize_on_the_mnist_mlp_meets_the_acceptance_figures(tmp_path):
    # hamjax optimize with every default (MLP 784-512-512-10, the bundled MNIST subset, seed 0); about a
    # minute on two cores. Measured on seeds 0..4: 22.2x smaller, 14-22x faster, -0.7..+0.9 points.
    assert cli.main(["optimize", "--out", str(tmp_path), "--quiet"]) == 0
    payload = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in payload["stages"]][:4] == ["dense", "distilled", "pruned", "int8"]
    ratios = _ratios(payload)
    assert ratios["size"] >= 16, ratios
    assert ratios["throughput"] >= 8, ratios
    assert ratios["accuracy_points"] >= -0.5, ratios


def test_export_a_reference_model_by_name(tmp_path, capsys):
    path = tmp_path / "cnn.onnx"
    argv = ["export", "cnn", "--data", "digits", "--out", str(path), "--static-batch"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "untrained cnn" in printed and "max relative error" in printed
    from hamjax.export import runtime

    assert runtime.Session(path).static_batch == 64
    from hamjax.export.input_stats import InputStats

    assert InputStats.load(tmp_path / "cnn.stats.json").shape == (8, 8, 1)
    assert "cnn.stats.json" in printed


def test_export_refuses_what_is_not_a_model(tmp_path, capsys):
    assert cli.main(["export", "resnet", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "neither a reference model" in err and "\n" not in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["optimize", "--model", "resnet"], "invalid choice: 'resnet' (choose a reference model from mlp, cnn"),
        (["optimize", "--data", "cifar"], "invalid choice: 'cifar' (choose a bundled dataset from mnist, digits"),
        (["optimize", "--seed", "x"], "invalid int value"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_are_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


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


_USER_MODEL = """
import jax, jax.numpy as jnp


def _mlp(classes):
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (64, 128)) * 0.125, "w2": jax.random.normal(k2, (128, classes)) * 0.09}
    apply_fn = lambda p, x: jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"]) @ p["w2"]
    return apply_fn, params


def build():
    apply_fn, params = _mlp(10)
    return apply_fn, params, jnp.zeros((2, 8, 8, 1))


def five_classes():
    apply_fn, params = _mlp(5)
    return apply_fn, params, jnp.zeros((2, 8, 8, 1))


def pair():
    return _mlp(10)
"""

_SMALL = """
name = "small"
[[steps]]
kind = "train"
epochs = 4
batch_size = 64
learning_rate = 3e-3
[[steps]]
kind = "quantize"
method = "dynamic"
[[steps]]
kind = "export"
precisions = "int8"
tensorrt = false
"""


@pytest.fixture
def user_files(tmp_path, monkeypatch, digits):
    """A module of the user's own (importable as usermodel) and digits as an .npz file, in the working directory."""
    import numpy as np

    (tmp_path / "usermodel.py").write_text(_USER_MODEL)
    arrays = {f"{k}_{split}": getattr(getattr(digits, split), k) for split in ("train", "val", "test") for k in "xy"}
    np.savez(tmp_path / "mine.npz", **arrays)
    (tmp_path / "small.toml").write_text(_SMALL)
    (tmp_path / "config_student.toml").write_text(
        'name = "c"\n[[steps]]\nkind = "train"\n[[steps]]\nkind = "distill"\nstudent = "config"\n'
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_optimize_a_model_and_arrays_of_the_users_own(user_files, capsys):
    out = user_files / "out"
    argv = ["optimize", "--model", "usermodel:build", "--data", "mine.npz", "--recipe", "small.toml"]
    assert cli.main([*argv, "--out", str(out), "--quiet"]) == 0
    payload = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in payload["stages"]] == ["dense", "int8", "onnx int8"]
    assert payload["meta"]["model"] == "usermodel:build" and payload["meta"]["data"] == "mine"
    dense, int8, onnx_int8 = payload["stages"]
    assert dense["accuracy"] > 0.9 and abs(onnx_int8["accuracy"] - int8["accuracy"]) < 0.01
    assert (out / "model" / "variables").is_dir() and (out / "model" / "model.int8.onnx").exists()
    printed = capsys.readouterr().out
    assert f"saved the dense model to {out / 'dense'}" in printed
    assert f"saved the dense model's variables to {out / 'model'}" in printed


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model", "no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
        (["--model", "usermodel:nothing"], "usermodel has no attribute 'nothing'"),
        (["--model", "usermodel:pair"], "must return (apply_fn, params, example_input), got a tuple of 2 items"),
        (
            ["--model", "usermodel:five_classes"],
            "--model usermodel:five_classes: the model gives 5 logits per example, but the labels have 10 classes",
        ),
        (["--data", "missing.npz"], "missing.npz"),
        (["--recipe", "config_student.toml"], "steps[1] (distill, param_ratio=0.25, student='config') needs a hamjax"),
    ],
)
def test_bad_model_or_data_of_the_users_own_is_one_line(user_files, capsys, argv, match):
    base = {"--model": "usermodel:build", "--data": "mine.npz", "--recipe": "small.toml"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    args = [x for pair in base.items() for x in pair]
    assert cli.main(["optimize", *args, "--out", str(user_files / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hamjax optimize: error: ") and match in err and "\n" not in err
    assert not (user_files / "out" / "report.json").exists()


def _no_training(monkeypatch):
    """Make any training a test failure: the errors below must come before it."""
    from hamjax import train

    def fit(*args, **kwargs):
        raise AssertionError("trained before refusing the arguments")

    monkeypatch.setattr(train, "fit", fit)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hamjax {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_optimize_refuses_an_out_that_is_a_file_before_training(tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert cli.main(["optimize", "--data", "digits", "--out", str(out), "--quiet"]) == 2
    assert f"--out must be a directory, got the regular file '{out}'" in _one_line_error(capsys, "optimize")
    assert cli.main(["optimize", "--data", "digits", "--out", str(out / "sub"), "--quiet"]) == 2
    assert f"--out '{out / 'sub'}' cannot be created: '{out}' is a file" in _one_line_error(capsys, "optimize")


@pytest.mark.parametrize(("name", "make"), [("report.json", "mkdir"), ("report.md", "mkdir"), ("model", "write_text")])
def test_optimize_refuses_an_out_whose_outputs_are_the_wrong_kind_before_training(
    tmp_path, monkeypatch, capsys, name, make
):
    _no_training(monkeypatch)
    path = tmp_path / name
    getattr(path, make)(*(["x"] if make == "write_text" else []))
    assert cli.main(["optimize", "--data", "digits", "--out", str(tmp_path), "--quiet"]) == 2
    kind = "a folder" if make == "mkdir" else "a file"
    assert f"{path} is {kind}, where optimize writes its {name}" in _one_line_error(capsys, "optimize")


def test_export_refuses_an_out_that_is_a_folder_before_exporting(tmp_path, capsys):
    assert cli.main(["export", "mlp", "--data", "digits", "--out", str(tmp_path)]) == 2
    assert f"--out '{tmp_path}' is a directory, not a file to write" in _one_line_error(capsys, "export")
    assert "exporting" not in capsys.readouterr().out


def test_export_of_a_corrupt_model_json_is_one_line(tmp_path, capsys):
    saved = tmp_path / "model"
    saved.mkdir()
    (saved / "model.json").write_text('{"config": ')
    assert cli.main(["export", str(saved), "--out", str(tmp_path / "m.onnx")]) == 2
    _one_line_error(capsys, "export")


def _raising(err):
    def load(*args, **kwargs):
        raise err

    return load


def _anticipated_errors():
    import json

    from hamjax.export.graph import ExportError
    from hamjax.export.trt_engine import TensorRTUnavailable
    from hamjax.models.external import ModelImportError
    from hamjax.recipes import RecipeError

    try:
        json.loads('{"steps": ')
    except json.JSONDecodeError as err:
        decode = err
    return [
        (RecipeError("recipe r: steps[0].epochs must be >= 1, got 0"), "steps[0].epochs must be >= 1, got 0"),
        (ExportError("export.onnx: out must be a file"), "export.onnx: out must be a file"),
        (ModelImportError("--model x:y: cannot import module 'x'"), "cannot import module 'x'"),
        (TensorRTUnavailable("TensorRT is not installed"), "TensorRT is not installed"),
        (decode, "JSONDecodeError: Expecting value: line 1 column 11"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "invalid start byte"),
        (IsADirectoryError(21, "Is a directory", "out/report.json"), "out/report.json: Is a directory"),
        (PermissionError(13, "Permission denied", "/out"), "/out: Permission denied"),
        (FileNotFoundError("load_tree: no checkpoint directory at /x"), "no checkpoint directory at /x"),
        (
            ValueError("checkpoint at step 4 in /x does not match\nthe expected structure"),
            "checkpoint at step 4 in /x does not match the expected structure",
        ),
    ]


_ANTICIPATED = _anticipated_errors()


@pytest.mark.parametrize(("err", "match"), _ANTICIPATED, ids=[type(err).__name__ for err, _ in _ANTICIPATED])
def test_every_anticipated_error_is_one_line_and_exit_2(monkeypatch, capsys, err, match):
    from hamjax import recipes

    monkeypatch.setattr(recipes, "load", _raising(err))
    assert cli.main(["recipes", "--check", "r.toml"]) == 2
    assert match in _one_line_error(capsys, "recipes")


def test_debug_shows_the_traceback_of_an_anticipated_error(monkeypatch, capsys):
    from hamjax import recipes

    monkeypatch.setattr(recipes, "load", _raising(recipes.RecipeError("bad recipe")))
    for argv in (["--debug", "recipes", "--check", "r.toml"], ["recipes", "--debug", "--check", "r.toml"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1] == "hamjax recipes: error: bad recipe"


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    from hamjax import recipes

    monkeypatch.setattr(recipes, "load", _raising(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["recipes", "--check", "r.toml"])


_ONE_EPOCH = """
name = "one-epoch"
[[steps]]
kind = "train"
epochs = 1
batch_size = 64
"""


def test_optimize_says_when_it_resumed_and_from_which_step(user_files, capsys):
    (user_files / "one.toml").write_text(_ONE_EPOCH)
    out = user_files / "out"
    argv = ["optimize", "--model", "usermodel:build", "--data", "mine.npz", "--recipe", "one.toml", "--out", str(out)]
    assert cli.main([*argv, "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "resumed" not in first
    assert json.loads((out / "report.json").read_text())["meta"]["resumed"] == {}
    from hamjax import checkpoint

    with checkpoint.Checkpointer(out / "checkpoints-0-dense") as ckpt:
        step = ckpt.latest_step()
    assert step is not None and step > 0
    assert cli.main([*argv, "--quiet"]) == 0
    assert f"resumed dense from step {step} (checkpoints in {out})" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["meta"]["resumed"] == {"dense": step}


def test_optimize_names_the_step_it_resumed_from_after_skipping_a_corrupt_one(user_files, capsys):
    two = _ONE_EPOCH.replace("epochs = 1", "epochs = 2") + "checkpoint_seconds = 0\n"  # a checkpoint each epoch
    (user_files / "two.toml").write_text(two)
    out = user_files / "out"
    argv = ["optimize", "--model", "usermodel:build", "--data", "mine.npz", "--recipe", "two.toml", "--out", str(out)]
    assert cli.main([*argv, "--quiet"]) == 0
    folder = out / "checkpoints-0-dense"
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    assert len(steps) >= 2, steps
    for path in (folder / str(steps[-1]) / "tree").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    with pytest.warns(RuntimeWarning, match=f"step {steps[-1]}"):
        assert cli.main([*argv, "--quiet"]) == 0
    assert f"resumed dense from step {steps[-2]} (checkpoints in {out})" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["meta"]["resumed"] == {"dense": steps[-2]}
