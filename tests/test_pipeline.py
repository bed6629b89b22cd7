"""``hamjax.optimize`` on models and arrays of the user's own: plain jnp, Linen, and the checks before training."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import recipes
from hamjax.recipes import RecipeError


def _pipeline(prune: dict) -> recipes.Recipe:
    """train -> ``prune`` -> static int8 -> export, sized for digits' 1,258 training images."""
    return recipes.validate(
        {
            "name": "custom",
            "steps": [
                {"kind": "train", "epochs": 6, "batch_size": 64, "learning_rate": 3e-3},
                {"kind": "prune", "finetune_epochs": 1, "batch_size": 64, **prune},
                {"kind": "quantize", "method": "static", "calibration_batches": 2, "batch_size": 64},
                {"kind": "export", "precisions": "fp32,int8", "tensorrt": False},
            ],
        }
    )


@pytest.fixture(scope="module")
def arrays(digits):
    """The digits splits as the user's own arrays: inputs flat (N, 64), labels int."""
    splits = {name: getattr(digits, name) for name in ("train", "val", "test")}
    return {name: (split.x.reshape(len(split.x), -1), split.y) for name, split in splits.items()}


def _mlp():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (64, 256)) * 0.125,
        "b1": jnp.zeros(256),
        "w2": jax.random.normal(k2, (256, 10)) * 0.0625,
        "b2": jnp.zeros(10),
    }

    def apply_fn(p, x):
        # biases broadcast explicitly: the tests run with jax_numpy_rank_promotion="raise"
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None, :])
        return h @ p["w2"] + p["b2"][None, :]

    return apply_fn, params


class _LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        with jax.numpy_dtype_promotion("standard"):  # Flax's avg_pool divides by a NumPy integer window size
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_plain_jnp_mlp_runs_train_nm_int8_export_to_the_end(arrays, tmp_path):
    dataset = hamjax.data.from_arrays(*arrays["train"], val=arrays["val"], test=arrays["test"])
    apply_fn, params = _mlp()
    recipe = _pipeline({"method": "nm", "n": 2, "m": 4})
    result = hamjax.optimize(apply_fn, params, dataset, recipe, out=tmp_path / "run")
    names = [row.name for row in result.stages]
    assert names == ["dense", "pruned", "int8", "onnx fp32", "onnx int8"]
    dense, pruned, int8, onnx_fp32, onnx_int8 = result.stages
    assert result.stage("onnx int8") is onnx_int8
    assert dense.accuracy > 0.9 and pruned.accuracy > dense.accuracy - 0.03
    assert abs(onnx_fp32.accuracy - pruned.accuracy) < 0.002 and abs(onnx_int8.accuracy - int8.accuracy) < 0.01
    assert onnx_int8.size_bytes < onnx_fp32.size_bytes / 3
    # the final float model is the pruned one: at most two of every four weights along the input axis
    assert result.params is not params and result.meta["final_stage"] == "pruned"
    for name in ("w1", "w2"):
        w = np.asarray(result.params[name])
        assert ((w.reshape(-1, 4, w.shape[1]) != 0).sum(axis=1) <= 2).all(), name
    assert result.config is None and result.meta["model"] == "custom"
    assert result.quantized is not None and result.dense[0] is apply_fn
    payload = json.loads(result.paths["report.json"].read_text())
    assert [s["name"] for s in payload["stages"]] == names and payload["meta"]["recipe"] == "custom"
    # a custom model keeps its variables (no architecture to write down) and its int8 ONNX file
    restored = hamjax.checkpoint.load_tree(result.paths["model"] / "variables", like=result.params)
    np.testing.assert_array_equal(restored["w1"], result.params["w1"])
    assert (result.paths["dense"] / "variables").is_dir() and result.paths["model int8"].exists()
    assert result.paths["onnx int8"] == tmp_path / "run" / "export" / "model.int8.onnx"


def test_linen_cnn_runs_train_magnitude_int8_export_to_the_end(digits):
    dataset = hamjax.data.from_arrays(digits.train.x, digits.train.y, val=tuple(digits.val), test=tuple(digits.test))
    model = _LinenCNN()
    apply_fn, variables = hamjax.linen_functional(model, model.init(jax.random.key(0), digits.train.x[:1]))
    recipe = _pipeline({"method": "magnitude", "sparsity": 0.5})
    result = hamjax.optimize(apply_fn, variables, dataset, recipe, seed=1)
    dense, pruned, int8, onnx_fp32, onnx_int8 = result.stages
    assert dense.accuracy > 0.85 and pruned.accuracy > dense.accuracy - 0.05
    assert abs(onnx_fp32.accuracy - pruned.accuracy) < 0.002 and abs(onnx_int8.accuracy - int8.accuracy) < 0.02
    assert hamjax.prune.sparsity_of(result.params["params"]) == pytest.approx(0.5, abs=0.01)
    assert "report.json" not in result.paths and result.paths["onnx int8"].exists()  # out=None: no report
    assert result.meta["seed"] == 1


def _no_training(monkeypatch):
    def fit(*args, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(hamjax.train, "fit", fit)


def test_a_config_student_on_a_custom_model_stops_before_training(arrays, monkeypatch, tmp_path):
    _no_training(monkeypatch)
    dataset = hamjax.data.from_arrays(*arrays["train"], test=arrays["test"])
    apply_fn, params = _mlp()
    recipe = recipes.validate({"name": "r", "steps": [{"kind": "train"}, {"kind": "distill", "student": "config"}]})
    match = (
        r"^optimize: recipe 'r' steps\[1\] \(distill, param_ratio=0\.25, student='config'\) needs a hamjax reference "
        r"model \(mlp, cnn, vit, hamnet\); this model is custom \(config=None\): pass config= of a reference model, "
        r"or a recipe whose steps run on any model \(bundled: .*int8-static.*\)$"
    )
    with pytest.raises(RecipeError, match=match):
        hamjax.optimize(apply_fn, params, dataset, recipe)
    assert recipes.reference_steps(recipes.load("default")) == []  # the default recipe runs on a custom model


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"recipe": "nope"}, RecipeError, r"^optimize: recipe: unknown recipe 'nope'; bundled recipes: \["),
        ({"recipe": 3}, TypeError, r"^optimize: recipe must be a bundled name, a \.toml path or a Recipe, got int$"),
        ({"data": (np.zeros((4, 64)), np.zeros(4))}, TypeError, r"^optimize: data must be a hamjax\.data\.Dataset"),
        ({"seed": -1}, ValueError, r"^optimize: seed must be an integer >= 0, got -1$"),
        ({"config": {"sizes": (64, 10)}}, TypeError, r"^optimize: config must be a hamjax reference model config"),
        (
            {"params": {"w1": jnp.zeros((64, 8)), "b1": jnp.zeros(8), "w2": jnp.zeros((8, 4)), "b2": jnp.zeros(4)}},
            ValueError,
            r"^optimize: apply_fn: the model gives 4 logits per example, but the labels have 10 classes",
        ),
        (
            {"params": {"w1": jnp.zeros((32, 8)), "b1": jnp.zeros(8), "w2": jnp.zeros((8, 10)), "b2": jnp.zeros(10)}},
            ValueError,
            r"^optimize: apply_fn: apply_fn\(params, example_input\) raised TypeError: dot_general",
        ),
    ],
)
def test_bad_input_is_refused_before_training_in_one_line(arrays, monkeypatch, change, error, match):
    _no_training(monkeypatch)
    apply_fn, params = _mlp()
    args = {"params": params, "data": hamjax.data.from_arrays(*arrays["train"]), "recipe": "nm-2-4", **change}
    with pytest.raises(error, match=match) as info:
        hamjax.optimize(apply_fn, args.pop("params"), args.pop("data"), args.pop("recipe"), **args)
    assert "\n" not in str(info.value)


def test_an_out_that_cannot_hold_the_results_is_refused_before_training(arrays, monkeypatch, tmp_path):
    _no_training(monkeypatch)
    apply_fn, params = _mlp()
    dataset = hamjax.data.from_arrays(*arrays["train"])
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"^optimize: out must be a directory, got the regular file '.*a-file'$"):
        hamjax.optimize(apply_fn, params, dataset, "nm-2-4", out=file)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "model").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"^optimize: out .*: its model folder would go to .*elsewhere, outside"):
        hamjax.optimize(apply_fn, params, dataset, "nm-2-4", out=out)
    (out / "model").unlink()
    (out / "report.md").mkdir()
    with pytest.raises(ValueError, match=r"report\.md is a folder, where optimize writes its report\.md$"):
        hamjax.optimize(apply_fn, params, dataset, "nm-2-4", out=out)
    with pytest.raises(ValueError, match=r"^optimize: profile must be a directory, got the regular file '.*a-file'$"):
        hamjax.optimize(apply_fn, params, dataset, "nm-2-4", profile=file)


def test_a_reference_model_with_its_config_passes_the_reference_check(digits, monkeypatch):
    calls = []

    def fit(*args, **kw):
        calls.append(1)
        raise KeyboardInterrupt  # stop at the first training: the checks passed

    monkeypatch.setattr(hamjax.train, "fit", fit)
    module = hamjax.models.build("mlp", input_shape=(8, 8, 1))
    apply_fn, params = hamjax.functional(module)
    with pytest.raises(KeyboardInterrupt):
        hamjax.optimize(apply_fn, params, digits, config=hamjax.models.config_of(module))
    assert calls == [1]


def test_result_stage_lookup_names_the_rows():
    result = hamjax.OptimizeResult([], None, None, None, None, None, {}, recipes.load("baseline"), {})
    with pytest.raises(KeyError, match=r"no stage 'dense'; stages: \[\]"):
        result.stage("dense")


def test_profile_writes_a_trace_per_step_and_meta_counts_compilations(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    dataset = hamjax.data.from_arrays(x, (x[:, 0] > 0).astype(np.int32))
    recipe = recipes.validate({"name": "r", "steps": [{"kind": "train", "epochs": 1, "batch_size": 32}]})
    params = {"w": jnp.zeros((16, 2)), "b": jnp.zeros(2)}
    result = hamjax.optimize(lambda p, x: x @ p["w"] + p["b"][None], params, dataset, recipe, profile=tmp_path)
    assert result.meta["profiles"] == {"dense": str(tmp_path / "dense")}
    (trace,) = (tmp_path / "dense").glob("plugins/profile/*/*.xplane.pb")
    assert trace.stat().st_size > 0
    compiled = result.meta["compile"]
    assert compiled["compiles"] >= 1 and compiled["seconds"] > 0 and compiled["cache_dir"] is None
    assert result.stage("dense").compiled_memory_bytes >= 256 * 16 * 4  # the throughput batch of inputs


@pytest.mark.slow
def test_the_default_recipe_runs_on_a_custom_model(digits, tmp_path):
    from reference_models import plain_mlp

    apply_fn, params = plain_mlp()
    result = hamjax.optimize(apply_fn, params, digits, "default", out=tmp_path / "run", progress=False)
    names = [s.name for s in result.stages]
    assert names[:3] == ["dense", "distilled", "pruned"] and "onnx int8" in names
    notes = (tmp_path / "run" / "report.md").read_text()
    assert "inherit through its channel groups" in notes and "shrunk physically" in notes
    dense, pruned = (sum(int(np.size(a)) for a in jax.tree.leaves(p)) for p in (params, result.params))
    assert pruned < dense / 2


def test_a_model_with_nothing_to_narrow_is_refused_before_training(arrays, monkeypatch):
    _no_training(monkeypatch)
    dataset = hamjax.data.from_arrays(*arrays["train"], test=arrays["test"])
    x = np.asarray(arrays["train"][0])
    params = {"w": jnp.zeros((int(np.prod(x.shape[1:])), 10)), "b": jnp.zeros(10)}

    def linear(p, xx):
        return xx.reshape(xx.shape[0], -1) @ p["w"] + p["b"][None]

    with pytest.raises(RecipeError, match=r"steps\[1\] \(distill\) narrows the model through its channel groups"):
        hamjax.optimize(linear, params, dataset, "default")
