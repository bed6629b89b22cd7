import numpy as np
import pytest

from hamjax.serve.model import BadInput, ServedModel, buckets, file_version


@pytest.fixture(scope="module")
def model(linear_onnx):
    return ServedModel(linear_onnx[0], threads=1, max_batch=6, name="default")


def test_buckets_are_powers_of_two_and_max_batch():
    assert buckets(1) == (1,)
    assert buckets(8) == (1, 2, 4, 8)
    assert buckets(6) == (1, 2, 4, 6)
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        buckets(0)


def test_an_onnx_model_reports_its_input_and_version(model, linear_onnx):
    assert (model.kind, model.input_shape, model.input_dtype, model.buckets) == ("onnx", (4,), np.float32, (1, 2, 4, 6))
    assert model.version == file_version(linear_onnx[0]) and len(model.version) == 16
    assert model.reference is None


def test_the_version_follows_the_bytes(tmp_path, onnx_writer):
    a, _, _ = onnx_writer(tmp_path / "a.onnx", seed=0)
    b, _, _ = onnx_writer(tmp_path / "b.onnx", seed=1)
    assert file_version(a) != file_version(b)
    assert file_version(a) == file_version(onnx_writer(tmp_path / "c.onnx", seed=0)[0])


@pytest.mark.parametrize("rows", [1, 3, 5, 6])
def test_predict_pads_to_a_bucket_and_returns_the_rows_asked(model, linear_onnx, rows):
    _, w, b = linear_onnx
    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), x @ w + b, rtol=1e-5, atol=1e-5)


def test_warm_runs_every_bucket(model, monkeypatch):
    seen = []
    session = model._runner

    class Recording:
        def __call__(self, x):
            seen.append(x.shape[0])
            return session(x)

        block, to_numpy = session.block, session.to_numpy

    monkeypatch.setattr(model, "_runner", Recording())
    assert model.warm() == (1, 2, 4, 6)
    assert seen == [1, 1, 2, 2, 4, 4, 6, 6]
    model.predict(np.ones((3, 4), np.float32))
    assert seen[-1] == 4


def test_validate_casts_integers_and_keeps_floats(model):
    out = model.validate(np.array([[1, 2, 3, 4]]))
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert model.validate(np.ones((2, 4), np.float64)).dtype == np.float32


@pytest.mark.parametrize(
    ("x", "status", "reason", "match"),
    [
        (np.ones((2, 3)), 422, "shape", r"expected shape \(rows, 4\), got \(2, 3\)"),
        (np.ones((2, 4, 1)), 422, "shape", "expected shape"),
        (np.ones(4), 422, "shape", "expected shape"),
        (np.zeros((0, 4)), 422, "empty", "empty batch"),
        (np.array([]), 422, "empty", "empty batch"),
        (np.ones((7, 4)), 413, "batch", "7 rows, more than max_batch=6"),
        (np.array([["a", "b", "c", "d"]]), 422, "dtype", "expected numbers"),
        (np.ones((1, 4), bool), 422, "dtype", "expected numbers"),
        (np.ones((1, 4), np.complex64), 422, "dtype", "expected numbers"),
        (np.array([[1.0, np.nan, 0.0, 0.0]]), 422, "nonfinite", "NaN or infinite"),
        (np.array([[1.0, np.inf, 0.0, 0.0]]), 422, "nonfinite", "NaN or infinite"),
        (np.array([[1e300, 0.0, 0.0, 0.0]]), 422, "nonfinite", "NaN or infinite"),
    ],
)
def test_validate_refuses_bad_inputs_with_a_status_and_reason(model, x, status, reason, match):
    with pytest.raises(BadInput, match=match) as info:
        model.validate(x)
    assert (info.value.status, info.value.reason) == (status, reason)


def test_a_file_that_is_not_onnx_is_refused_with_the_reason(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("definitely not a protobuf")
    with pytest.raises(ValueError, match="not a model onnxruntime can run.*onnxruntime could not load it"):
        ServedModel(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty, not an ONNX model"):
        ServedModel(empty)
    with pytest.raises(ValueError, match="no file or directory"):
        ServedModel(tmp_path / "missing.onnx")


def test_a_folder_that_is_not_a_saved_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a saved model: saved.load: no model.json"):
        ServedModel(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a saved model: saved.load: .* is not JSON"):
        ServedModel(tmp_path)


def test_a_fixed_batch_below_max_batch_is_refused(tmp_path, onnx_writer):
    path, _, _ = onnx_writer(tmp_path / "fixed.onnx", batch=4)
    with pytest.raises(ValueError, match="fixed batch of 4 rows, below max_batch=8"):
        ServedModel(path, max_batch=8)
    fixed = ServedModel(path, max_batch=4)
    assert fixed.buckets == (4,) and fixed.predict(np.ones((3, 4), np.float32)).shape == (3, 3)


def test_a_saved_jax_model_is_served_through_jax(tmp_path):
    import jax

    from hamjax import functional
    from hamjax.models import MLPConfig, from_config, saved

    config = MLPConfig(sizes=(4, 3))
    apply_fn, params = functional(from_config(config, seed=0))
    saved.save(tmp_path / "mlp", config, params)
    model = ServedModel(tmp_path / "mlp", max_batch=2)
    assert (model.kind, model.input_shape, model.buckets) == ("jax", (4,), (1, 2))
    x = np.arange(4, dtype=np.float32)[None]
    np.testing.assert_allclose(model.predict(x), np.asarray(jax.jit(apply_fn)(params, x)), rtol=1e-5, atol=1e-6)


def test_statistics_beside_the_model_become_its_reference(tmp_path, onnx_writer):
    from hamjax.serve.reference import InputStats, stats_path

    path, _, _ = onnx_writer(tmp_path / "m.onnx")
    InputStats.from_data(np.random.default_rng(0).normal(size=(200, 4))).save(stats_path(path))
    assert ServedModel(path).reference.features == 4
    InputStats.from_data(np.random.default_rng(0).normal(size=(200, 7))).save(stats_path(path))
    with pytest.raises(ValueError, match="does not describe this model's inputs"):
        ServedModel(path)


def test_a_symbolic_dimension_besides_the_batch_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "seq.onnx"))
    with pytest.raises(ValueError, match=r"shape \(batch, None\); .* only the batch dimension may be symbolic"):
        ServedModel(tmp_path / "seq.onnx")


def test_an_integer_model_takes_integers_in_range(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.INT8, ["B", 2])
    y = helper.make_tensor_value_info("y", TensorProto.INT8, ["B", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "int.onnx"))
    model = ServedModel(tmp_path / "int.onnx", max_batch=2)
    assert model.validate(np.array([[1, -2]])).dtype == np.int8
    for bad, match in [(np.array([[1.5, 2.0]]), "takes integers"), (np.array([[1, 300]]), "outside int8's range")]:
        with pytest.raises(BadInput, match=match):
            model.validate(bad)


def test_onnxruntime_threads_sleep_between_calls(model):
    # a spinning intra-op pool burns the CPU quota the event loop and the other requests need
    assert model._runner._config["session.intra_op.allow_spinning"] == "0"
