"""hamjax.export.tensorrt: argument checks everywhere, engines where TensorRT and a GPU exist."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hamjax import measure
from hamjax.export import tensorrt as trt_export
from hamjax.export import trt_engine

IN, OUT = 8, 5
HAS_TENSORRT, WHY_NOT = trt_export.available()
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason=f"TensorRT unavailable: {WHY_NOT}")


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(IN, OUT)).astype(np.float32)
    b = rng.normal(size=(OUT,)).astype(np.float32)
    return w, b


def _qdq_params(w):
    """Symmetric int8 codes of ``w`` per output column, and a fixed activation scale."""
    w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    w_codes = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    return w_codes, w_scale, np.float32(4.0 / 127)


def _save(tmp_path, nodes, inits, batch, name="model.onnx", opset=21, zero_dtype=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, IN])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, OUT])
    g = helper.make_graph(nodes, "linear", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # opset 21's IR; older TensorRT parsers know no newer one
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def linear_onnx(tmp_path, batch="B", name="model.onnx"):
    """``y = x @ W + b``, batch ``batch`` (a name for symbolic, an int for fixed)."""
    w, b = _weights()
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    return _save(tmp_path, nodes, {"W": w, "b": b}, batch, name)


def qdq_onnx(tmp_path, zero=None, name="qdq.onnx"):
    """The int8 QDQ form of :func:`linear_onnx`: quantized input, per-column int8 weights.

    ``zero`` is the activation zero point (int8 0 by default, what TensorRT needs).
    """
    zero = np.int8(0) if zero is None else zero
    w, b = _weights()
    w_codes, w_scale, x_scale = _qdq_params(w)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["Wd"], axis=1),
        helper.make_node("MatMul", ["xd", "Wd"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    inits = {"xs": x_scale, "xz": np.asarray(zero), "Wq": w_codes, "ws": w_scale, "wz": np.zeros(OUT, np.int8), "b": b}
    return _save(tmp_path, nodes, inits, "B", name)


def linear_reference(x):
    w, b = _weights()
    return x @ w + b


def qdq_reference(x):
    """What the QDQ graph computes, in numpy (ONNX rounds half to even, as ``np.round`` does)."""
    w, b = _weights()
    w_codes, w_scale, x_scale = _qdq_params(w)
    xd = np.clip(np.round(x / x_scale), -128, 127) * x_scale
    return xd @ (w_codes.astype(np.float32) * w_scale) + b


def _inputs(rows, seed=1):
    return np.random.default_rng(seed).uniform(-3, 3, size=(rows, IN)).astype(np.float32)


def _close(got, want, rtol):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


# --- everywhere: the fixtures, availability and argument checks -------------------------------


@pytest.mark.parametrize(("make", "reference"), [(linear_onnx, linear_reference), (qdq_onnx, qdq_reference)])
def test_fixture_models_compute_their_references(tmp_path, make, reference):
    session = ort.InferenceSession(str(make(tmp_path)), providers=["CPUExecutionProvider"])
    x = _inputs(7)
    _close(session.run(None, {"x": x})[0], reference(x), 1e-5)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is available here")
def test_build_without_tensorrt_says_how_to_install(tmp_path):
    path = linear_onnx(tmp_path)
    with pytest.raises(trt_export.TensorRTUnavailable, match="pip install tensorrt cuda-python"):
        trt_export.build(path, "fp16")
    assert not (tmp_path / "model.fp16.engine").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "bf16"}, r"build: precision must be one of \('fp32', 'fp16', 'int8'\), got 'bf16'"),
        ({"min_batch": 0}, "build: min_batch must be an integer >= 1, got 0"),
        ({"max_batch": 2.5}, "build: max_batch must be an integer >= 1, got 2.5"),
        ({"opt_batch": True}, "build: opt_batch must be an integer >= 1, got True"),
        ({"min_batch": 8, "max_batch": 4}, "got min_batch=8, max_batch=4"),
        ({"min_batch": 300}, "got min_batch=300, max_batch=256"),
        ({"min_batch": 1, "opt_batch": 64, "max_batch": 32}, "min=1, opt=64, max=32"),
        ({"min_batch": 4, "opt_batch": 2}, "min=4, opt=2, max=256"),
        ({"workspace_gib": 0}, "build: workspace_gib must be a finite number > 0, got 0"),
        ({"workspace_gib": -1.0}, "build: workspace_gib must be a finite number > 0, got -1.0"),
        ({"workspace_gib": float("inf")}, "build: workspace_gib must be a finite number > 0, got inf"),
        ({"workspace_gib": "2"}, "build: workspace_gib must be a finite number > 0, got '2'"),
        ({"precision": "int8"}, r"hamjax\.export\.onnx\(\.\.\., precision='int8'\) first"),
    ],
)
def test_build_rejects_bad_arguments_before_tensorrt(tmp_path, kwargs, match):
    path = linear_onnx(tmp_path)
    with pytest.raises(ValueError, match=match):
        trt_export.build(path, **kwargs)


def test_tensorrt_reexports_the_engine_side():
    for name in ("Engine", "TensorRTUnavailable", "available", "INSTALL_HINT"):
        assert getattr(trt_export, name) is getattr(trt_engine, name), name
    assert trt_export.PRECISIONS == ("fp32", "fp16", "int8")


def test_build_missing_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        trt_export.build(tmp_path / "nope.onnx", "fp32")


def test_build_rejects_a_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(ValueError, match="not a loadable ONNX file"):
        trt_export.build(path, "fp32")


def test_build_rejects_out_equal_to_the_onnx_file(tmp_path):
    path = linear_onnx(tmp_path)
    with pytest.raises(ValueError, match="out must differ from onnx_path"):
        trt_export.build(path, "fp32", out=path)


@pytest.mark.parametrize("kwargs", [{"max_batch": 16}, {"min_batch": 4}, {"opt_batch": 2}])
def test_fixed_batch_model_rejects_other_batch_sizes(tmp_path, kwargs):
    path = linear_onnx(tmp_path, batch=8)
    with pytest.raises(ValueError, match="fixed batch of 8"):
        trt_export.build(path, "fp32", **kwargs)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is available here")
def test_fixed_batch_model_accepts_its_own_batch(tmp_path):
    # Validation passes, so the next stop is the availability check.
    path = linear_onnx(tmp_path, batch=8)
    with pytest.raises(trt_export.TensorRTUnavailable):
        trt_export.build(path, "fp32", min_batch=8, opt_batch=8, max_batch=8)


def test_build_rejects_graphs_without_one_input_and_output(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", IN])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", IN])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", IN])
    g = helper.make_graph([helper.make_node("Add", ["x", "z"], ["y"])], "two", [x, z], [y])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), path)
    with pytest.raises(ValueError, match=r"exactly one input and one output, got inputs \['x', 'z'\]"):
        trt_export.build(path, "fp32")


def test_build_rejects_symbolic_dims_beyond_the_batch(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "seq", [x], [y])
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), path)
    with pytest.raises(ValueError, match="fixed beyond the batch axis; axis 1 is 'T'"):
        trt_export.build(path, "fp32")


def test_int8_rejects_asymmetric_activations(tmp_path):
    path = qdq_onnx(tmp_path, zero=np.uint8(128))
    with pytest.raises(ValueError, match="uint8 zero point.*act_symmetric=True"):
        trt_export.build(path, "int8")


def test_int8_rejects_nonzero_zero_points(tmp_path):
    path = qdq_onnx(tmp_path, zero=np.int8(3))
    with pytest.raises(ValueError, match="nonzero zero point"):
        trt_export.build(path, "int8")


def test_int8_rejects_dynamic_quantization(tmp_path):
    w, b = _weights()
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("MatMul", ["xd", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    path = _save(tmp_path, nodes, {"W": w, "b": b}, "B", "dynamic.onnx")
    with pytest.raises(ValueError, match="DynamicQuantizeLinear"):
        trt_export.build(path, "int8")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is available here")
@pytest.mark.parametrize("precision", trt_export.PRECISIONS)
def test_valid_qdq_model_passes_validation_for_every_precision(tmp_path, precision):
    with pytest.raises(trt_export.TensorRTUnavailable):
        trt_export.build(qdq_onnx(tmp_path), precision)


# --- where TensorRT and a GPU exist -----------------------------------------------------------


@needs_tensorrt
@pytest.mark.parametrize(
    ("make", "reference", "precision", "rtol"),
    [
        (linear_onnx, linear_reference, "fp32", 1e-3),
        (linear_onnx, linear_reference, "fp16", 1e-2),
        (qdq_onnx, qdq_reference, "int8", 2e-2),
    ],
)
def test_engine_matches_numpy(tmp_path, make, reference, precision, rtol):
    path = trt_export.build(make(tmp_path), precision, min_batch=1, opt_batch=16, max_batch=64, workspace_gib=0.25)
    assert path.name.endswith(f".{precision}.engine") and path.stat().st_size > 0
    with trt_export.Engine(path, name=f"trt-{precision}") as engine:
        assert engine.batch_range == (1, 64)
        assert engine.input_dtype == np.float32 and engine.output_dtype == np.float32
        for rows in (1, 5, 64, 3):  # grows the buffers, then reuses them for a smaller batch
            x = _inputs(rows, seed=rows)
            y = engine.to_numpy(engine.block(engine(x)))
            assert y.shape == (rows, OUT)
            _close(y, reference(x), rtol)
        assert engine.peak_memory_bytes() >= 64 * (IN + OUT) * 4
    engine.close()  # idempotent


@needs_tensorrt
def test_engine_checks_its_inputs(tmp_path):
    with trt_export.Engine(trt_export.build(linear_onnx(tmp_path), "fp32", max_batch=8)) as engine:
        with pytest.raises(ValueError, match="batches of 1 to 8"):
            engine(_inputs(9))
        with pytest.raises(ValueError, match=r"shape \(batch, 8\)"):
            engine(np.zeros((2, IN + 1), np.float32))
        with pytest.raises(ValueError, match="dtype float32"):
            engine(np.zeros((2, IN), np.int32))
        x = _inputs(4).astype(np.float64)  # floating inputs are cast to the engine's dtype
        _close(engine(x), linear_reference(x), 1e-3)
    with pytest.raises(RuntimeError, match="closed"):
        engine(_inputs(1))


@needs_tensorrt
def test_fixed_batch_engine(tmp_path):
    path = trt_export.build(linear_onnx(tmp_path, batch=4), "fp32", out=tmp_path / "sub" / "fixed.engine")
    assert path == tmp_path / "sub" / "fixed.engine"
    with trt_export.Engine(path) as engine:
        assert engine.batch_range == (4, 4)
        x = _inputs(4)
        _close(engine(x), linear_reference(x), 1e-3)


@needs_tensorrt
def test_engine_runs_through_measure(tmp_path):
    path = trt_export.build(linear_onnx(tmp_path), "fp16", max_batch=32)
    x = _inputs(32)
    with trt_export.Engine(path, name="trt-fp16") as engine:
        assert isinstance(engine, measure.Runner)
        m = measure.measure(
            engine,
            name="trt-fp16",
            size_bytes=engine.size_bytes,
            example=x[:4],
            x_test=x,
            y_test=linear_reference(x).argmax(-1),
            throughput_batches=(8, 32),
            warmup=1,
            runs=3,
        )
    assert m.size_bytes == path.stat().st_size
    assert m.latency.batch_size == 1 and m.latency.p50_ms > 0
    assert [t.batch_size for t in m.throughput] == [8, 32]
    assert m.accuracy >= 0.9  # fp16 may flip a near-tie argmax, not most of them
    assert m.peak_memory_bytes is not None and m.peak_memory_bytes > 0


def test_build_checks_out_before_building(tmp_path):
    path = linear_onnx(tmp_path)
    (tmp_path / "engine-dir").mkdir()
    with pytest.raises(ValueError, match=r"build: out '.*engine-dir' is a directory, not a file to write"):
        trt_export.build(path, "fp32", out=tmp_path / "engine-dir")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match=r"build: out '.*a-file/m\.engine': its directory must be a directory"):
        trt_export.build(path, "fp32", out=tmp_path / "a-file" / "m.engine")
