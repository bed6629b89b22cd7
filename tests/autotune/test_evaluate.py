"""Tests for hamjax.autotune.evaluate: capped finetunes, the deployed stage, measured candidates and baseline."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import recipes
from hamjax.autotune import evaluate


def _dataset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 0.5).astype(np.int32)
    return hamjax.data.from_arrays(x, y, seed=0)


def _model():
    rng = np.random.default_rng(1)
    params = {
        "w1": jnp.asarray(rng.normal(size=(12, 256)) / np.sqrt(12), jnp.float32),
        "b1": jnp.zeros(256, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(256, 3)) / np.sqrt(256), jnp.float32),
        "b2": jnp.zeros(3, jnp.float32),
    }

    def apply_fn(p, x):
        return jnp.maximum(x @ p["w1"] + p["b1"][None], 0.0) @ p["w2"] + p["b2"][None]

    return apply_fn, params


@pytest.fixture(scope="module")
def trained():
    dataset = _dataset()
    apply_fn, params = _model()
    result = hamjax.train.fit(
        apply_fn, params, dataset, hamjax.train.TrainConfig(epochs=10, batch_size=64, learning_rate=1e-2)
    )
    return apply_fn, result.params, dataset


def test_capped_lowers_only_longer_finetunes():
    raw = {
        "name": "r",
        "steps": [
            {"kind": "prune", "finetune_epochs": 5},
            {"kind": "quantize", "finetune_epochs": 0},
            {"kind": "distill", "epochs": 20},
        ],
    }
    out = evaluate.capped(recipes.validate(raw), 2)
    assert [s.params.get("finetune_epochs", s.params.get("epochs")) for s in out.steps] == [2, 0, 2]
    assert out.steps[0].params["sparsity"] == recipes.validate(raw).steps[0].params["sparsity"]


def test_deployed_stage_prefers_the_last_export():
    stages = [hamjax.report.Stage(name, None, {}) for name in ("pruned", "onnx fp32", "onnx int8")]
    assert evaluate.deployed_stage(types.SimpleNamespace(stages=stages)).name == "onnx int8"
    assert evaluate.deployed_stage(types.SimpleNamespace(stages=stages[:1])).name == "pruned"
    with pytest.raises(ValueError, match="no stage"):
        evaluate.deployed_stage(types.SimpleNamespace(stages=[]))


def test_storage_bytes_counts_the_weights_in_the_precision_the_file_holds():
    params = {"w": jnp.zeros((4, 8), jnp.bfloat16), "n": jnp.zeros(3, jnp.int32)}
    qparams = {"w": np.zeros((4, 8), np.int8), "s": np.zeros(8, np.float32)}
    context = types.SimpleNamespace(params=params, extras={})
    stage = lambda name, size=None: hamjax.report.Stage(name, None, size_bytes=size)  # noqa: E731
    assert evaluate.storage_bytes(context, stage("onnx fp32", 999)) == 32 * 4 + 3 * 4  # the file's fp32
    assert evaluate.storage_bytes(context, stage("onnx fp16", 999)) == 32 * 2 + 3 * 4
    # quantized by the export itself: the float params, an upper bound
    assert evaluate.storage_bytes(context, stage("onnx int8", 999)) == 32 * 4 + 3 * 4
    context.extras["quantized"] = (None, qparams)
    assert evaluate.storage_bytes(context, stage("onnx int8", 999)) == 32 + 8 * 4  # the quantize step's int storage
    assert evaluate.storage_bytes(context, stage("int8", 77)) == 77  # not exported: the stage's own storage
    assert evaluate.storage_bytes(context, stage("pruned")) == 32 * 2 + 3 * 4


@pytest.mark.slow
def test_candidate_is_measured_like_the_baseline(trained, tmp_path):
    apply_fn, params, dataset = trained
    ev = evaluate.Evaluator(apply_fn, params, dataset, folder=tmp_path, latency_runs=5)
    base = ev.baseline()
    assert base.stage == "onnx fp32"
    assert base.measured.accuracy == pytest.approx(
        hamjax.measure.accuracy(apply_fn, dataset.val.x, dataset.val.y, params=params), abs=1e-6
    )
    raw = {
        "name": "int8",
        "steps": [
            {"kind": "quantize", "method": "static"},
            {"kind": "export", "precisions": "int8", "tensorrt": False},
        ],
    }
    screened = ev.run(recipes.validate(raw), "cheap")  # no export: the int8 model measured in JAX, no latency
    assert screened.stage == "int8" and screened.measured.latency_ms is None
    assert screened.measured.size_bytes < 0.7 * base.measured.size_bytes
    out = ev.run(recipes.validate(raw), "full")
    assert out.stage == "onnx int8" and out.folder.parent == tmp_path
    assert out.measured.size_bytes == screened.measured.size_bytes  # the same int storage, screened or deployed
    assert out.measured.size_bytes < 0.4 * base.measured.size_bytes  # int8 kernels (their fp32 scales and biases stay)
    assert base.measured.size_bytes == 4 * sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    assert out.measured.file_bytes == out.context.extras["onnx int8"].size_bytes > out.measured.size_bytes
    assert screened.measured.file_bytes is None
    assert out.measured.latency_ms > 0 and base.measured.accuracy >= 0.75
    assert abs(out.measured.accuracy - base.measured.accuracy) < 0.05
    ev.discard(out)
    assert not out.folder.exists()
    assert ev.baseline() is base  # measured once


def test_bad_candidates_and_arguments(trained):
    apply_fn, params, dataset = trained
    ev = evaluate.Evaluator(apply_fn, params, dataset)
    with pytest.raises(ValueError, match="fidelity"):
        ev.run(recipes.validate({"name": "r", "steps": [{"kind": "fold"}]}), "medium")
    with pytest.raises(ValueError, match="trains from scratch"):
        ev.run(recipes.validate({"name": "r", "steps": [{"kind": "train"}]}))
    with pytest.raises(TypeError, match="Recipe"):
        ev.run({"name": "r"})
    ev.close()
    assert not ev.folder.exists()
    with pytest.raises(ValueError, match="cheap_epochs"):
        evaluate.Evaluator(apply_fn, params, dataset, cheap_epochs=-1)
    no_val = dataset._replace(val=None)
    with pytest.raises(ValueError, match="validation split"):
        evaluate.Evaluator(apply_fn, params, no_val)
