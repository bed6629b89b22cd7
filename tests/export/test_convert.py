"""export.onnx: every precision, the checks, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from reference_models import random_model

from hamjax import export, quant
from hamjax.export import convert, runtime

SHAPE = (8, 8, 1)


def _x(rows=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(rows, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("name", ["mlp", "cnn", "vit", "hamnet"])
def test_fp32_export_of_every_reference_model(tmp_path, name):
    apply_fn, _, params = random_model(name, input_shape=SHAPE, num_classes=10)
    result = export.onnx(apply_fn, params, _x(), tmp_path / "m.onnx")
    assert result.path.exists() and result.size_bytes == result.path.stat().st_size
    assert result.input_shape == (None, *SHAPE)
    assert {c.inputs for c in result.checks} == {"random", "data"}
    assert all(c.passed and c.max_relative_error <= 1e-5 for c in result.checks)
    onnx.checker.check_model(onnx.load(result.path))
    session = runtime.Session(result.path)
    for rows in (1, 300):
        x = _x(rows, seed=rows)
        want = np.asarray(jax.jit(apply_fn)(params, x))
        np.testing.assert_allclose(session(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_fp16_export_keeps_float32_io(tmp_path):
    apply_fn, _, params = random_model("cnn", input_shape=SHAPE, num_classes=10)
    result = export.onnx(apply_fn, params, _x(), tmp_path / "m.onnx", precision="fp16")
    session = runtime.Session(result.path)
    assert session.input_dtype == np.float32
    assert all(c.max_relative_error <= 1e-2 for c in result.checks)
    inits = onnx.load(result.path).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in inits)


def test_fp16_io_gives_float16_inputs(tmp_path):
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE, num_classes=10)
    result = export.onnx(apply_fn, params, _x(), tmp_path / "m.onnx", precision="fp16", fp16_io=True)
    session = runtime.Session(result.path)
    assert session.input_dtype == np.float16
    assert session(_x(3)).dtype == np.float16


def test_int8_from_a_float_model_with_calibration(tmp_path):
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE, num_classes=10)
    result = export.onnx(apply_fn, params, _x(), tmp_path / "m.onnx", precision="int8", calibration=[_x(128, 1)])
    assert all(c.argmax_agreement >= 0.995 for c in result.checks)
    assert "QGemm" in result.integer_ops
    assert result.size_bytes < 0.4 * export.onnx(apply_fn, params, _x(), tmp_path / "f.onnx").size_bytes


def test_int8_from_a_quantized_pair(tmp_path):
    apply_fn, _, params = random_model("cnn", input_shape=SHAPE, num_classes=10)
    qapply, qparams = quant.quantize_model(apply_fn, params, calibration=[_x(128, 1)])
    result = export.onnx(qapply, qparams, _x(), tmp_path / "m.onnx", precision="int8", check_data=_x(200, 3))
    (data,) = [c for c in result.checks if c.inputs == "data"]
    assert data.rows == 264 and data.argmax_agreement >= 0.995


def test_static_batch_file_still_takes_any_batch_through_session(tmp_path):
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE, num_classes=10)
    result = export.onnx(apply_fn, params, _x(16), tmp_path / "m.onnx", dynamic_batch=False)
    assert result.input_shape == (16, *SHAPE)
    x = _x(37, 5)
    np.testing.assert_allclose(runtime.Session(result.path)(x), jax.jit(apply_fn)(params, x), rtol=1e-5, atol=1e-5)


def test_plain_function_and_keyword_arguments(tmp_path):
    w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 3)), jnp.float32)

    def fn(p, x, *, scale):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ p) * scale

    result = export.onnx(fn, w, _x(), tmp_path / "m.onnx", scale=2.0)
    x = _x(5, 9)
    np.testing.assert_allclose(runtime.Session(result.path)(x), fn(w, x, scale=2.0), rtol=1e-5, atol=1e-6)


def test_a_failed_check_raises_with_numbers_and_keeps_the_file(tmp_path, monkeypatch):
    monkeypatch.setitem(convert.MAX_RELATIVE_ERROR, "fp16", 1e-12)
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE, num_classes=10)
    with pytest.raises(export.ExportError, match=r"fails its check \(max relative error <= 1e-12\): random inputs"):
        export.onnx(apply_fn, params, _x(), tmp_path / "m.onnx", precision="fp16")
    assert not (tmp_path / "m.onnx").exists()
    assert (tmp_path / "m.rejected.onnx").exists()


def test_no_temporary_file_is_left(tmp_path):
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE, num_classes=10)
    export.onnx(apply_fn, params, _x(), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"precision": "int4"}, ValueError, "precision must be one of"),
        ({"path": "model.bin"}, ValueError, r"must end in \.onnx"),
        ({"path": "missing/dir/m.onnx"}, FileNotFoundError, "does not exist"),
        ({"precision": "int8"}, ValueError, "needs calibration batches"),
        ({"example_input": np.ones((4, 8, 8, 1), np.int32)}, ValueError, "must be floating"),
        ({"example_input": np.float32(1)}, ValueError, "leading batch axis"),
        ({"example_input": np.full((2, 8, 8, 1), np.nan, np.float32)}, ValueError, "non-finite"),
    ],
)
def test_bad_arguments_are_refused_before_tracing(tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.chdir(tmp_path)
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE, num_classes=10)
    args = {"example_input": _x(), "path": tmp_path / "m.onnx", **kwargs}
    with pytest.raises(error, match=match):
        export.onnx(apply_fn, params, args.pop("example_input"), args.pop("path"), **args)


def test_a_quantized_model_must_export_as_int8(tmp_path):
    apply_fn, _, params = random_model("mlp", input_shape=SHAPE, num_classes=10)
    qapply, qparams = quant.quantize_model(apply_fn, params, calibration=[_x(64)])
    with pytest.raises(ValueError, match="exports as precision='int8'"):
        export.onnx(qapply, qparams, _x(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="already quantized"):
        export.onnx(qapply, qparams, _x(), tmp_path / "m.onnx", precision="int8", calibration=[_x(8)])


def test_flax_pools_with_a_positional_window_export(tmp_path):
    from flax import nnx

    def fn(p, x):
        with jax.numpy_dtype_promotion("standard"):  # Flax's avg_pool divides by a NumPy integer window size
            y = nnx.max_pool(x, (2, 2), strides=(2, 2)) + nnx.avg_pool(x, (2, 2), strides=(2, 2))
        return y.reshape(x.shape[0], -1) @ p

    w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    result = export.onnx(fn, w, _x(), tmp_path / "m.onnx")
    assert all(c.max_relative_error <= 1e-5 for c in result.checks)


def test_a_linen_model_exports(tmp_path):
    import flax.linen as nn

    import hamjax

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(16)(x.reshape(x.shape[0], -1))
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(4)(nn.relu(x))

    model = Net()
    variables = model.init(jax.random.key(0), _x(2))
    apply_fn, params = hamjax.linen_functional(model, variables)
    for precision, kw in (("fp32", {}), ("int8", {"calibration": [_x(128, 2)]})):
        result = export.onnx(apply_fn, params, _x(), tmp_path / f"{precision}.onnx", precision=precision, **kw)
        assert all(c.passed for c in result.checks)


@pytest.mark.parametrize("far", [False, True])
def test_int8_rows_tied_at_int8_resolution_count_as_agreeing(tmp_path, monkeypatch, far):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 3)).astype(np.float32)
    w[:, 0] = np.abs(w[:, 0])
    w[:, 1] = w[:, 0] * 1.001  # classes 0 and 1 tie (0.1% apart) in every row; class 2 loses
    w[:, 2] = -np.abs(w[:, 2])
    fn = lambda p, x: x.reshape(x.shape[0], -1) @ p  # noqa: E731
    x = _x(256)
    run = runtime.Session.__call__

    def nudged(self, xs):  # the winner lowered by 0.5% of the largest |logit|, or the loser raised far above
        y = run(self, xs).copy()
        if far:
            y[:, 2] = 2 * np.abs(y).max()
        else:
            y[np.arange(len(y)), y.argmax(-1)] -= 0.005 * np.abs(y).max()
        return y

    monkeypatch.setattr(runtime.Session, "__call__", nudged)
    kw = {"precision": "int8", "calibration": [x[:128]]}
    if far:
        with pytest.raises(export.ExportError, match=r"argmax agreement 0\.0000 \(0 rows tied\)"):
            export.onnx(fn, jnp.asarray(w), x[:64], tmp_path / "m.onnx", **kw)
    else:
        result = export.onnx(fn, jnp.asarray(w), x[:64], tmp_path / "m.onnx", **kw)
        assert all(c.passed for c in result.checks) and sum(c.ties for c in result.checks) > 0
        assert min(c.argmax_agreement for c in result.checks) < convert.MIN_ARGMAX_AGREEMENT
