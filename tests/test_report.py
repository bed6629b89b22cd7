import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import measure, report


def _stage(name, w):
    return report.Stage.from_model(name, lambda p, x: x.reshape(x.shape[0], -1) @ p["w"], {"w": w})


def test_measure_stages_and_write_report(tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 2, 2, 1)).astype(np.float32)
    y = (x.reshape(300, -1)[:, 0] > 0).astype(np.int32)
    perfect = jnp.zeros((4, 2)).at[0, 1].set(1.0).at[0, 0].set(-1.0)
    stages = [_stage("dense", perfect), _stage("worse", -perfect)]
    ms = report.measure_stages(stages, x, y, runs=5)
    assert [m.name for m in ms] == ["dense", "worse"]
    assert ms[0].accuracy == 1.0 and ms[1].accuracy == 0.0
    assert ms[0].params == 8 and ms[0].size_bytes == 32
    assert ms[0].latency.batch_size == 1 and ms[0].throughput[0].batch_size == 256
    out = report.write_report(tmp_path / "r", ms, {"model": "toy", "env": {"jax": "x"}})
    payload = json.loads((out / "report.json").read_text())
    assert payload["meta"]["model"] == "toy" and payload["stages"][1]["accuracy"] == 0.0
    md = (out / "report.md").read_text()
    assert "| dense | 8 | 0.000 |" in md and md.count("\n| ") == 4  # header, rule, two rows
    assert not list(out.glob(".*tmp*"))


def test_stage_size_defaults_to_param_bytes_and_can_be_given():
    assert _stage("a", jnp.zeros((4, 2))).size_bytes == 32
    s = report.Stage("onnx", lambda: None, None, size_bytes=123)
    assert s.size_bytes == 123


def test_measure_stages_requires_stages():
    with pytest.raises(ValueError, match="no stages"):
        report.measure_stages([], np.zeros((1, 1)), np.zeros(1))


def test_the_memory_column_appears_where_the_backend_reports_compiled_memory(tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 2, 2, 1)).astype(np.float32)
    y = np.zeros(300, np.int32)
    (jax_row,) = report.measure_stages([_stage("dense", jnp.ones((4, 2)))], x, y, runs=2)
    if jax_row.compiled_memory_bytes is not None:  # the CPU backend reports it
        # the batch of 256 inputs and logits at least
        assert jax_row.compiled_memory_bytes >= 256 * 4 * 4 + 256 * 2 * 4
        assert report.columns([jax_row])[-2:] == (report.MEMORY_COLUMN, "test accuracy")
        out = report.write_report(tmp_path, [jax_row], {"model": "toy"})
        assert json.loads((out / "report.json").read_text())["columns"][-2] == report.MEMORY_COLUMN
        assert (
            f"| {jax_row.compiled_memory_bytes / 1e6:.2f} | {jax_row.accuracy:.4f} |" in (out / "report.md").read_text()
        )
    opaque = dataclasses.replace(jax_row, compiled_memory_bytes=None)  # an onnxruntime row has none
    assert report.columns([opaque]) == report.COLUMNS
    assert len(report.rows([opaque])[0]) == len(report.COLUMNS)
    old = opaque.to_dict()
    del old["compiled_memory_bytes"]  # a report written before the column existed
    assert measure.Measurement.from_dict(old) == opaque
