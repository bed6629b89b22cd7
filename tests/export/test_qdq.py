"""The int8 QDQ graph from hamjax's quantized model."""

import jax
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from reference_models import random_model

from hamjax import quant
from hamjax.export import graph, qdq, runtime


def _data(shape, rows=256, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(rows, *shape)).astype(np.float32)


def _quantized(name, method="static", **kw):
    shape = (8, 8, 1)
    apply_fn, _, params = random_model(name, input_shape=shape, num_classes=10)
    x = _data(shape)
    qapply, qparams = quant.quantize_model(apply_fn, params, method=method, calibration=[x[:128]], example=x[:16], **kw)
    return qapply, qparams, x


def _agreement(model, qapply, qparams, x):
    got = runtime.Session(model).__call__(x)
    want = np.asarray(jax.jit(qapply)(qparams, x))
    return float(np.mean(got.argmax(-1) == want.argmax(-1))), got, want


@pytest.mark.parametrize("name", ["mlp", "cnn", "vit", pytest.param("hamnet", marks=pytest.mark.slow)])
def test_static_int8_matches_the_quantized_jax_model(name):
    qapply, qparams, x = _quantized(name)
    model = qdq.quantized_model(qapply, qparams, x[:4])
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_q")]
    # a convolution of fewer than 4 input channels stores its grid values in float (integer.MIN_INTEGER_CONV_CHANNELS)
    grid = [t for t in model.graph.initializer if t.name.startswith("hq_w") and t.name.endswith("_f")]
    assert len(int8) + len(grid) == len(qapply.site_table(qparams))
    assert len(grid) == 1 or name != "cnn"
    agree, got, want = _agreement(model, qapply, qparams, x)
    assert agree >= 0.995
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


def test_weights_are_stored_as_int8_codes_of_the_quantized_model():
    qapply, qparams, x = _quantized("mlp")
    model = qdq.quantized_model(qapply, qparams, x[:4])
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    stored = qparams["weights"]["params"]["layers"][0]["kernel"]
    np.testing.assert_array_equal(inits["hq_w0_q"], np.asarray(stored.values))
    np.testing.assert_allclose(inits["hq_w0_s"], np.asarray(stored.scale).reshape(-1), rtol=1e-6)


def test_onnxruntime_runs_integer_gemms_for_the_mlp():
    qapply, qparams, x = _quantized("mlp")
    session = runtime.Session(qdq.quantized_model(qapply, qparams, x[:4]))
    assert "QGemm" in session.integer_ops()
    assert "Gemm" not in session.optimized_ops()


def test_bias_is_folded_into_the_gemm_as_int32():
    qapply, qparams, x = _quantized("mlp")
    model = qdq.quantized_model(qapply, qparams, x[:4])
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert gemms and all(len(n.input) == 3 for n in gemms)
    int32 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert len(int32) >= 2 * len(gemms)


def test_dynamic_method_uses_dynamic_quantize_linear():
    qapply, qparams, x = _quantized("mlp", method="dynamic")
    model = qdq.quantized_model(qapply, qparams, x[:4])
    ops = {n.op_type for n in model.graph.node}
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert _agreement(model, qapply, qparams, x)[0] >= 0.995


def test_weight_only_method_keeps_float_activations():
    qapply, qparams, x = _quantized("mlp", method="weight_only")
    model = qdq.quantized_model(qapply, qparams, x[:4])
    ops = {n.op_type for n in model.graph.node}
    assert "DequantizeLinear" in ops and not ops & {"QuantizeLinear", "DynamicQuantizeLinear"}
    assert _agreement(model, qapply, qparams, x)[0] >= 0.995


def test_per_tensor_weights_export():
    qapply, qparams, x = _quantized("cnn", per_channel=False)
    model = qdq.quantized_model(qapply, qparams, x[:4])
    scales = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("hq_w")}
    # the dense layers keep one scale; a convolution takes its batch norm's per-channel scales when it folds them
    assert all(scales[f"hq_w{j}_s"].ndim == 0 for j in (2, 3, 4))
    assert scales["hq_w1_s"].ndim == 1 and "hq_w0_f" in scales  # the 1-channel convolution stores float grid values
    unfolded = qdq.quantized_model(qapply, qparams, x[:4], integer_outputs=False)
    kept = [t for t in unfolded.graph.initializer if t.name.startswith("hq_w") and t.name.endswith("_s")]
    assert len(kept) == 5 and all(numpy_helper.to_array(t).ndim == 0 for t in kept)
    assert _agreement(model, qapply, qparams, x)[0] >= 0.995


def test_skipped_sites_stay_float():
    apply_fn, _, params = random_model("mlp", input_shape=(8, 8, 1), num_classes=10)
    x = _data((8, 8, 1))
    sites = quant.quantize_model(apply_fn, params, calibration=[x[:64]])[0].sites
    qapply, qparams = quant.quantize_model(apply_fn, params, calibration=[x[:64]], skip=[sites[-1].name])
    model = qdq.quantized_model(qapply, qparams, x[:4])
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_q")]
    assert len(int8) == len(sites) - 1
    assert _agreement(model, qapply, qparams, x)[0] >= 0.995


def test_static_batch_export():
    qapply, qparams, x = _quantized("mlp")
    model = qdq.quantized_model(qapply, qparams, x[:4], dynamic_batch=False)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_bit_widths_other_than_8_are_refused():
    qapply, qparams, x = _quantized("mlp", bits=4)
    with pytest.raises(graph.ExportError, match="8-bit"):
        qdq.quantized_model(qapply, qparams, x[:4])


def test_dynamic_symmetric_activations_are_refused():
    qapply, qparams, x = _quantized("mlp", method="dynamic", act_symmetric=True)
    with pytest.raises(graph.ExportError, match="DynamicQuantizeLinear"):
        qdq.quantized_model(qapply, qparams, x[:4])
