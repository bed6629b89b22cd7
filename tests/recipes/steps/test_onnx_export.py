import numpy as np
import pytest

import hamjax
from hamjax import models, report
from hamjax.export import runtime
from hamjax.export.input_stats import InputStats
from hamjax.recipes import Context, RecipeError, run, validate

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits():
    return hamjax.data.load("digits")


def _context(digits, workdir=None):
    module = models.build("mlp", input_shape=SHAPE)
    apply_fn, params = hamjax.functional(module)
    return Context(apply_fn, params, digits, progress=False, config=models.config_of(module), workdir=workdir)


def test_export_step_adds_checked_onnx_rows(digits, tmp_path):
    recipe = validate(
        {
            "name": "t",
            "steps": [
                {"kind": "train", "epochs": 3, "learning_rate": 1e-2},
                {"kind": "export", "precisions": "fp32, fp16, int8"},
            ],
        }
    )
    context = run(recipe, _context(digits, str(tmp_path)))
    dense, fp32, fp16, int8 = context.stages
    assert [s.name for s in (fp32, fp16, int8)] == ["onnx fp32", "onnx fp16", "onnx int8"]
    assert context.params is dense.params  # the current model is unchanged
    for stage, precision in ((fp32, "fp32"), (fp16, "fp16"), (int8, "int8")):
        path = tmp_path / "export" / f"model.{precision}.onnx"
        assert stage.size_bytes == path.stat().st_size
        assert stage.param_count == hamjax.measure.param_count(dense.params)
        assert isinstance(stage.make_runner(), runtime.Session)
        assert "checked against JAX" in stage.notes
        stats = InputStats.load(tmp_path / "export" / f"model.{precision}.stats.json")
        assert stats.shape == SHAPE and stats.count == len(digits.train.x)
    assert "QGemm" in int8.notes  # calibrated here, since no quantize step ran
    assert "integer kernels at 3 of 3 quantized sites" in int8.notes
    assert int8.size_bytes < fp32.size_bytes / 3
    assert "no TensorRT row" in int8.notes  # no GPU here
    rows = report.measure_stages(context.stages, digits.test.x, digits.test.y, runs=3)
    assert abs(rows[1].accuracy - rows[0].accuracy) < 1e-9
    assert abs(rows[3].accuracy - rows[0].accuracy) < 0.02


def test_export_step_uses_the_quantized_model_of_a_quantize_step(digits, tmp_path):
    recipe = validate(
        {
            "name": "t",
            "steps": [
                {"kind": "train", "epochs": 2, "learning_rate": 1e-2},
                {"kind": "quantize", "method": "dynamic"},
                {"kind": "export", "precisions": "int8", "tensorrt": False},
            ],
        }
    )
    context = run(recipe, _context(digits, str(tmp_path)))
    assert context.stages[-1].name == "onnx int8"
    assert "DynamicQuantizeLinear" in context.extras["onnx int8"].ops
    assert "TensorRT" not in context.stages[-1].notes


def test_export_step_without_workdir_writes_to_a_temporary_directory(digits):
    recipe = validate({"name": "t", "steps": [{"kind": "export", "precisions": "fp32", "stage": "file"}]})
    context = run(recipe, _context(digits))
    assert context.stages[-1].name == "file fp32"
    assert context.extras["onnx fp32"].path.exists()
    x = digits.test.x[:5]
    np.testing.assert_allclose(
        context.stages[-1].make_runner()(x), hamjax.measure.JaxRunner(context.apply_fn, context.params)(x), atol=1e-5
    )


@pytest.mark.parametrize("value", ["int4", "fp32,fp32", "", " , "])
def test_bad_precisions_are_refused(value):
    with pytest.raises(RecipeError, match="precisions"):
        validate({"name": "t", "steps": [{"kind": "export", "precisions": value}]})
