"""The ``quantize`` recipe step and the bundled quantization recipes."""

import jax
import numpy as np
import pytest

import hamjax
from hamjax import measure, quant, recipes
from hamjax.recipes import RecipeError


@pytest.fixture(scope="module")
def trained(digits):
    module = hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 32, 10))
    apply_fn, params = hamjax.functional(module)
    recipe = recipes.validate(
        {"name": "t", "steps": [{"kind": "train", "epochs": 15, "batch_size": 64, "learning_rate": 3e-3}]}
    )
    ctx = recipes.run(recipe, recipes.Context(apply_fn, params, digits, progress=False))
    return ctx.apply_fn, ctx.params, ctx.stages[0]


def _quantize(trained, digits, **step):
    apply_fn, params, dense = trained
    recipe = recipes.validate({"name": "q", "steps": [{"kind": "quantize", "batch_size": 64, **step}]})
    ctx = recipes.Context(apply_fn, params, digits, progress=False, stages=[dense])
    return recipes.run(recipe, ctx)


@pytest.mark.parametrize("method", ["weight_only", "dynamic", "static"])
def test_post_training_methods_keep_accuracy_and_store_int8(trained, digits, method):
    apply_fn, params, _ = trained
    ctx = _quantize(trained, digits, method=method, calibration_batches=4)
    qapply, qparams = ctx.extras["quantized"]
    assert ctx.params is params  # the float model stays the current model
    kernels = [x for x in jax.tree.leaves(qparams, is_leaf=quant.is_qtensor) if quant.is_qtensor(x)]
    assert len(kernels) == 3 and all(k.values.dtype == np.int8 for k in kernels)
    float_acc = hamjax.train.evaluate(apply_fn, params, digits.test)["accuracy"]
    q_acc = hamjax.train.evaluate(qapply, qparams, digits.test)["accuracy"]
    assert q_acc >= float_acc - 0.02
    row = ctx.stages[-1]
    assert row.name == "int8" and not row.timed
    assert row.size_bytes == measure.param_bytes(qparams) < measure.param_bytes(params) / 3
    assert row.param_count == measure.param_count(params)
    assert method.replace("_", "-") in row.notes or method in row.notes


def test_report_row_has_accuracy_but_no_speed(trained, digits):
    ctx = _quantize(trained, digits, method="static", calibration_batches=2, calibration_method="minmax")
    m = hamjax.report.measure_stages(ctx.stages[-1:], digits.test.x, digits.test.y, runs=2)[0]
    assert m.latency is None and m.throughput == ()
    assert m.accuracy > 0.8


def test_qat_finetunes_then_converts(trained, digits):
    ctx = _quantize(trained, digits, method="qat", finetune_epochs=1, learning_rate=1e-4, calibration_batches=2)
    _, params, _ = trained
    assert ctx.params is not params  # QAT updated the float params
    qapply, qparams = ctx.extras["quantized"]
    assert qapply.method == "static"
    assert hamjax.train.evaluate(qapply, qparams, digits.test)["accuracy"] > 0.85


def test_skip_keeps_the_named_sites_in_float_and_says_so(trained, digits):
    apply_fn, params, _ = trained
    names = [site.name for site in hamjax.jaxpr.find_sites(apply_fn, params, digits.val.x[:2])]
    whole = _quantize(trained, digits, method="dynamic")
    ctx = _quantize(trained, digits, method="dynamic", skip=f"{names[0]}, {names[-1]}")
    qapply, qparams = ctx.extras["quantized"]
    assert qapply.skip == frozenset({names[0], names[-1]})
    assert [row["name"] for row in qapply.site_table(qparams)] == names[1:-1]
    kernels = [x for x in jax.tree.leaves(qparams, is_leaf=quant.is_qtensor) if quant.is_qtensor(x)]
    assert len(kernels) == 1  # the first and last kernels stay float
    assert ctx.stages[-1].size_bytes > whole.stages[-1].size_bytes
    assert "2 site(s) kept in float" in ctx.stages[-1].notes and names[0] in ctx.stages[-1].notes
    with pytest.raises(ValueError, match="skip names unknown sites"):
        _quantize(trained, digits, method="dynamic", skip="['nope']")


def test_int4_weight_only_stores_codes_in_range(trained, digits):
    ctx = _quantize(trained, digits, method="weight_only", bits=4, stage="int4")
    qt = ctx.extras["quantized"][1]["weights"]["params"]["layers"][0]["kernel"]
    codes = np.asarray(qt.values)
    assert qt.bits == 4 and codes.min() >= -7 and codes.max() <= 7
    assert ctx.stages[-1].name == "int4"


@pytest.mark.parametrize(
    "step, message",
    [
        ({"method": "qat"}, "finetune_epochs >= 1"),
        ({"method": "static", "finetune_epochs": 2}, "only applies to method = 'qat'"),
        ({"bits": 1}, "bits must be >= 2"),
        ({"bits": 17}, "bits must be <= 16"),
        ({"act_bits": 20}, "act_bits must be <= 16"),
        ({"calibration_method": "kl"}, "calibration_method must be one of"),
        ({"method": "kl"}, r"steps\[0\]\.method must be one of \['weight_only', 'dynamic', 'static', 'qat'\]"),
        ({"percentile": 40.0}, "percentile must be > 50"),
        ({"calibration_batches": 0}, "calibration_batches must be >= 1"),
    ],
)
def test_bad_fields_fail_at_load_time(step, message):
    with pytest.raises(RecipeError, match=message):
        recipes.validate({"name": "q", "steps": [{"kind": "quantize", **step}]})


@pytest.mark.parametrize("name", ["int8-static", "int8-weight-only", "qat-int8", "default"])
def test_bundled_recipes_load_and_quantize_last(name):
    kinds = [s.kind for s in recipes.load(name).steps]
    # the default recipe exports what it quantized; nothing changes the model after quantize
    assert kinds[-1] == "quantize" or kinds[-2:] == ["quantize", "export"]
