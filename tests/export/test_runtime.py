"""Tests for hamjax.export.runtime on tiny hand-built ONNX models (onnxruntime on CPU)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from hamjax import measure
from hamjax.export import runtime
from hamjax.export.runtime import INTEGER_OPS, PROVIDERS, Session, available_providers, resolve_providers

K, N = 6, 3
RNG = np.random.default_rng(0)
W = RNG.normal(size=(K, N)).astype(np.float32)
B = RNG.normal(size=(N,)).astype(np.float32)


def _model(nodes, inputs, outputs, initializers=(), opset=21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _affine(batch="B") -> onnx.ModelProto:
    """y = x @ W + b, batch symbolic (``"B"``) or fixed (an int)."""
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, N])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")],
    )


def _affine_fp16() -> onnx.ModelProto:
    """The affine model behind a float16 input and output (Casts keep CPU kernels float32)."""
    return _model(
        [
            helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["x32", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y32"]),
            helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT16),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["B", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["B", N])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")],
    )


def _qdq_matmul() -> onnx.ModelProto:
    """Quantize/dequantize x (uint8) and an int8 weight with per-column scales, then a float MatMul."""
    scales = np.abs(W).max(0) / 127
    wq = np.round(W / scales).astype(np.int8)
    return _model(
        [
            helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", N])],
        [
            numpy_helper.from_array(np.float32(0.05), "sx"),
            numpy_helper.from_array(np.uint8(128), "zx"),
            numpy_helper.from_array(wq, "wq"),
            numpy_helper.from_array(scales.astype(np.float32), "sw"),
            numpy_helper.from_array(np.zeros(N, np.int8), "zw"),
        ],
    )


def _reference(x) -> np.ndarray:
    return np.asarray(x, np.float32) @ W + B


def _rows(n: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, K)).astype(dtype)


@pytest.fixture(scope="module")
def affine():
    return Session(_affine())


def test_output_matches_numpy(affine):
    x = _rows(7)
    y = affine(x)
    assert y.shape == (7, N) and y.dtype == np.float32
    np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-5)


def test_records_model_facts(affine):
    assert (affine.input_name, affine.output_name) == ("x", "y")
    assert affine.input_shape == (None, K)
    assert affine.input_dtype == np.float32
    assert affine.static_batch is None
    assert affine.providers == ["CPUExecutionProvider"]
    assert affine.name == "onnxruntime"
    assert "x: float32[?, 6]" in repr(affine) and "CPUExecutionProvider" in repr(affine)


@pytest.mark.parametrize("source", ["proto", "bytes", "path", "str"])
def test_loads_proto_bytes_and_paths(source, tmp_path):
    model = _affine()
    path = tmp_path / "affine.onnx"
    onnx.save(model, path)
    arg = {"proto": model, "bytes": model.SerializeToString(), "path": path, "str": str(path)}[source]
    x = _rows(3)
    np.testing.assert_allclose(Session(arg)(x), _reference(x), rtol=1e-5, atol=1e-5)


def test_batch_size_splits_like_one_call(affine):
    x = _rows(23)
    split = Session(_affine(), batch_size=5)
    np.testing.assert_allclose(split(x), affine(x), rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 50), batch_size=st.integers(1, 16))
def test_batch_size_splitting_property(rows, batch_size):
    x = _rows(rows)
    y = Session(_affine(), batch_size=batch_size)(x)
    assert y.shape == (rows, N)
    np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
def test_static_batch_pads_and_trims(rows):
    session = Session(_affine(batch=4))
    assert session.static_batch == 4 and session.input_shape == (4, K)
    x = _rows(rows)
    y = session(x)
    assert y.shape == (rows, N)
    np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 4, 7])
def test_run_many_equals_separate_calls(batch_size):
    session = Session(_affine(), batch_size=batch_size)
    xs = [_rows(n) for n in (1, 2, 3, 9, 1, 4)]
    ys = session.run_many(xs)
    assert [y.shape for y in ys] == [(x.shape[0], N) for x in xs]
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_allclose(y, session(x), rtol=1e-6, atol=1e-6)
    assert session.run_many([]) == []


def test_run_many_static_batch():
    session = Session(_affine(batch=4))
    xs = [_rows(n) for n in (3, 2, 6)]
    for x, y in zip(xs, session.run_many(xs), strict=True):
        np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-5)


def test_run_many_separates_different_symbolic_dims():
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T"])],
    )
    session = Session(model)
    assert session.input_shape == (None, None)
    xs = [_rows(2), _rows(3), _rows(1)[:, :4], _rows(2)]
    for x, y in zip(xs, session.run_many(xs), strict=True):
        np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_output_without_batch_axis_cannot_be_split():
    model = _model(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    x = _rows(5)
    np.testing.assert_allclose(Session(model)(x), x.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"has shape \(\) for 2 input rows"):
        Session(model, batch_size=2)(x)
    with pytest.raises(ValueError, match="keeps the input's batch axis"):
        Session(model).run_many([x, x])


def test_floating_inputs_are_cast(affine):
    x = _rows(4, np.float64)
    y = affine(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-5)


def test_fp16_model_takes_float32_and_float64():
    session = Session(_affine_fp16())
    assert session.input_dtype == np.float16
    for dtype in (np.float16, np.float32, np.float64):
        x = _rows(5, dtype)
        y = session(x)
        assert y.dtype == np.float16
        np.testing.assert_allclose(y, _reference(x.astype(np.float16)), rtol=1e-2, atol=1e-2)


def test_non_floating_input_is_rejected(affine):
    with pytest.raises(ValueError, match="float32, got non-floating int64"):
        affine(np.ones((2, K), np.int64))


@pytest.mark.parametrize("shape", [(K,), (2, K + 1), (2, K, 1)])
def test_wrong_shape_is_rejected(affine, shape):
    with pytest.raises(
        ValueError, match=r"expected 2 dims, \(rows, \*\(6,\)\).*got shape \(" + ", ".join(map(str, shape))
    ):
        affine(np.ones(shape, np.float32))


def test_empty_input_is_rejected(affine):
    with pytest.raises(ValueError, match="at least one row"):
        affine(np.ones((0, K), np.float32))


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        Session(tmp_path / "nowhere.onnx")


def test_unloadable_model_raises_with_reason():
    with pytest.raises(ValueError, match="onnxruntime could not load it: .*"):
        Session(b"not an onnx model")
    bad = _model(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", K])],
    )
    with pytest.raises(ValueError, match="could not load it: .*NoSuchOp"):
        Session(bad)


def test_two_inputs_are_rejected():
    model = _model(
        [helper.make_node("Add", ["x", "z"], ["y"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", K]) for n in ("x", "z")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", K])],
    )
    with pytest.raises(ValueError, match="exactly one input and one output, got 2 inputs"):
        Session(model)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "Session: batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "Session: batch_size must be an integer >= 1, got 2.5"),
        ({"threads": 0}, "Session: threads must be an integer >= 1, got 0"),
        (
            {"optimization": "max"},
            r"Session: optimization must be one of \('none', 'basic', 'extended', 'all'\), got 'max'",
        ),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Session(_affine(), **kwargs)


def test_batch_size_must_match_a_fixed_batch():
    with pytest.raises(ValueError, match="batch_size=3 conflicts with the model's fixed batch of 4"):
        Session(_affine(batch=4), batch_size=3)
    assert Session(_affine(batch=4), batch_size=4).batch_size == 4


@pytest.mark.parametrize("optimization", ["none", "basic", "extended", "all"])
def test_options_give_the_same_output(optimization):
    x = _rows(5)
    y = Session(_affine(), optimization=optimization, threads=1)(x)
    np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-5)


def test_resolve_providers():
    auto = resolve_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    assert auto == [PROVIDERS[p] for p in available_providers()]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider", "cpu"]) == ["CPUExecutionProvider"]
    assert "cpu" in available_providers()
    with pytest.raises(ValueError, match="unknown provider 'nope'; known: cpu, cuda, tensorrt"):
        resolve_providers("nope")
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        Session(_affine(), providers=["cpu", "nope"])
    with pytest.raises(ValueError, match="at least one provider"):
        resolve_providers([])


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has the CUDA provider"
)
def test_unavailable_provider_is_rejected():
    with pytest.raises(ValueError, match="CUDAExecutionProvider not available on this machine; available: .*cpu"):
        resolve_providers("cuda")


def test_qdq_matmul_runs_integer_kernels(affine):
    session = Session(_qdq_matmul())
    assert "MatMulIntegerToFloat" in session.optimized_ops()
    assert session.integer_ops() and set(session.integer_ops()) <= INTEGER_OPS
    assert session.optimized_ops() is session.optimized_ops()
    x = _rows(8)
    np.testing.assert_allclose(session(x), _reference(x) - B, atol=0.15)
    assert affine.integer_ops() == ()
    assert "MatMul" in affine.optimized_ops() or "Gemm" in affine.optimized_ops()


def test_unoptimized_qdq_keeps_float_matmul():
    session = Session(_qdq_matmul(), optimization="none")
    assert session.integer_ops() == ()
    assert {"DequantizeLinear", "MatMul", "QuantizeLinear"} <= set(session.optimized_ops())


def test_runner_protocol_and_measure_helpers(affine):
    assert isinstance(affine, measure.Runner)
    assert affine.peak_memory_bytes() is None
    x = _rows(4)
    y = affine(x)
    assert affine.block(y) is y and isinstance(affine.to_numpy(y), np.ndarray)
    lat = measure.latency(affine, x, warmup=1, runs=3)
    assert (lat.batch_size, lat.runs) == (4, 3) and 0 < lat.p50_ms <= lat.p95_ms
    thr = measure.throughput(affine, x, [1, 16], warmup=1, runs=2)
    assert [t.batch_size for t in thr] == [1, 16] and all(t.samples_per_s > 0 for t in thr)


def test_measure_fills_every_field():
    session = Session(_affine(batch=4), name="affine-b4")
    x_test = _rows(40)
    y_test = _reference(x_test).argmax(-1)
    y_test[:10] = (y_test[:10] + 1) % N
    model_bytes = len(_affine(batch=4).SerializeToString())
    m = measure.measure(
        session,
        name=session.name,
        size_bytes=model_bytes,
        example=_rows(3),
        x_test=x_test,
        y_test=y_test,
        latency_batch=2,
        throughput_batches=(1, 8),
        warmup=1,
        runs=3,
    )
    assert m.name == "affine-b4" and m.params == 0 and m.size_bytes == model_bytes
    assert m.latency.batch_size == 2 and m.latency.runs == 3 and m.latency.p50_ms > 0
    assert [t.batch_size for t in m.throughput] == [1, 8]
    assert m.accuracy == pytest.approx(0.75)
    assert m.peak_memory_bytes is None
    assert measure.accuracy(session, x_test, y_test, batch_size=7) == pytest.approx(0.75)


def test_module_docstring_and_public_names():
    assert runtime.__doc__ and "Runner" in runtime.__doc__
    assert {"QGemm", "MatMulIntegerToFloat", "QLinearWhere"} <= INTEGER_OPS and len(INTEGER_OPS) == 19


def _weight_only_matmul():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(64, 32)).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, size=32).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "wq"),
        numpy_helper.from_array(scale, "ws"),
        numpy_helper.from_array(np.zeros(32, np.int8), "wz"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32])
    return _model(nodes, [x], [y], inits), w.astype(np.float32) * scale


def test_weight_only_models_keep_float_activations_by_default():
    model, w = _weight_only_matmul()
    x = np.random.default_rng(1).normal(size=(16, 64)).astype(np.float32)
    exact = runtime.Session(model)(x)
    np.testing.assert_allclose(exact, x @ w, rtol=1e-4, atol=1e-4)
    lossy = runtime.Session(model, config={"session.qdq_matmulnbits_accuracy_level": "4"})
    assert "MatMulNBits" in lossy.optimized_ops()
    assert np.abs(lossy(x) - x @ w).max() > 10 * np.abs(exact - x @ w).max()
