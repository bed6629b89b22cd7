"""Tests for hamjax.measure: the same ruler on jax, numpy and onnxruntime runners."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import footprint
from hamjax import measure as hm


class NumpyRunner:
    """A Runner over plain numpy: proves nothing in measure is jax-specific."""

    name = "numpy"

    def __init__(self, w, b, sleep_s=0.0):
        self.w, self.b, self.sleep_s = w, b, sleep_s

    def __call__(self, x):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return x @ self.w + self.b

    def block(self, y):
        return y

    def to_numpy(self, y):
        return np.asarray(y)


class OnnxRunner:
    """A Runner over an onnxruntime CPU session."""

    name = "onnxruntime"

    def __init__(self, model_bytes):
        import onnxruntime as ort

        self.session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x):
        return self.session.run(None, {self.input_name: np.asarray(x, np.float32)})

    def block(self, y):
        return y

    def to_numpy(self, y):
        return np.asarray(y[0])


def linear_onnx(w, b):
    """Serialized ONNX graph y = x @ w + b with a dynamic batch axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def classification_problem(n=10, classes=4, wrong=3):
    """Inputs whose identity-linear prediction is right on all but ``wrong`` rows."""
    labels = np.arange(n) % classes
    x = np.eye(classes, dtype=np.float32)[labels]
    y = labels.copy()
    y[:wrong] = (y[:wrong] + 1) % classes
    return x, y, (n - wrong) / n


def test_measure_reexports_the_footprint():
    for name in ("param_count", "param_bytes", "peak_memory_bytes", "process_peak_rss_bytes", "environment"):
        assert getattr(hm, name) is getattr(footprint, name), name


def test_jax_runner_compiles_once_per_shape_and_matches_eager():
    traces = []

    def apply_fn(params, x):
        traces.append(x.shape)
        return jnp.tanh(x @ params["w"] + params["b"])

    params = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.ones((1, 4))}
    runner = hm.JaxRunner(apply_fn, params)
    assert runner.name == "jax"
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    for _ in range(3):
        y = runner.to_numpy(runner.block(runner(x)))
    assert traces == [(5, 3)]
    runner(x[:2])
    runner(x[:2])
    assert traces == [(5, 3), (2, 3)]
    # params are an argument of the executable, not constants folded into it: new values, no retrace
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(runner.params))
    runner.params = jax.tree_util.tree_map(jnp.zeros_like, runner.params)
    np.testing.assert_array_equal(runner.to_numpy(runner(x)), np.zeros((5, 4), np.float32))
    assert traces == [(5, 3), (2, 3)]
    np.testing.assert_allclose(y, np.asarray(apply_fn(params, x)), rtol=1e-6, atol=1e-6)
    eager = hm.JaxRunner(apply_fn, params, jit=False, name="eager")
    np.testing.assert_allclose(eager.to_numpy(eager(x)), y, rtol=1e-6, atol=1e-6)


def test_jax_runner_to_numpy_rejects_multiple_outputs():
    runner = hm.JaxRunner(lambda p, x: (x, x), None)
    with pytest.raises(ValueError, match="one array"):
        runner.to_numpy(runner(np.ones((1, 2))))


def test_latency_orders_percentiles_and_measures_sleep():
    lat = hm.latency(hm.JaxRunner(lambda p, x: x * p, jnp.float32(3)), np.ones((4, 2), np.float32), runs=20)
    assert lat.batch_size == 4 and lat.runs == 20
    assert 0 < lat.p50_ms <= lat.p95_ms
    slow = NumpyRunner(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), sleep_s=0.002)
    lat = hm.latency(slow, np.ones((1, 2), np.float32), warmup=1, runs=15)
    assert 2.0 <= lat.p50_ms <= 10.0


def test_latency_min_time_extends_runs():
    slow = NumpyRunner(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), sleep_s=0.002)
    lat = hm.latency(slow, np.ones((1, 2), np.float32), warmup=0, runs=1, min_time_s=0.03)
    # one run asked for; more taken until the timed calls add up to min_time_s (however slow a loaded machine makes them)
    assert lat.runs >= 2 and lat.runs * lat.mean_ms >= 30.0 * (1 - 1e-6)


def test_throughput_is_batch_over_median_time_and_tiles_rows():
    seen = []

    class Recording(NumpyRunner):
        def __call__(self, x):
            seen.append(x.shape[0])
            return super().__call__(x)

    runner = Recording(np.eye(3, dtype=np.float32), np.zeros(3, np.float32), sleep_s=0.001)
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    results = hm.throughput(runner, rows, [1, 5], warmup=1, runs=4)
    assert [r.batch_size for r in results] == [1, 5]
    assert seen == [1] * 5 + [5] * 5
    for r in results:
        assert r.samples_per_s == pytest.approx(r.batch_size / (r.p50_batch_ms / 1e3))
    assert results[1].samples_per_s > results[0].samples_per_s

    made = []
    out = hm.throughput(runner, lambda b: made.append(b) or np.zeros((b, 3), np.float32), (2,), warmup=0, runs=1)
    assert made == [2] and out[0].batch_size == 2


def test_accuracy_exact_with_partial_last_batch_and_two_shapes():
    x, y, expected = classification_problem(n=10, classes=4, wrong=3)
    traces = []

    def apply_fn(params, x):
        traces.append(x.shape[0])
        return x @ params

    assert hm.accuracy(apply_fn, x, y, params=jnp.eye(4), batch_size=4) == pytest.approx(expected)
    assert sorted(set(traces)) == [2, 4] and len(traces) == 2
    one_hot = np.eye(4)[y]
    runner = NumpyRunner(np.eye(4, dtype=np.float32), np.zeros(4, np.float32))
    assert hm.accuracy(runner, x, one_hot, batch_size=3) == pytest.approx(expected)
    assert hm.accuracy(runner, x, y, batch_size=100) == pytest.approx(expected)


def test_numpy_and_onnxruntime_runners_go_through_measure():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    b = np.zeros(4, np.float32)
    x, y, _ = classification_problem(n=9, classes=4, wrong=0)
    y = (x @ w).argmax(-1)
    y[0] = (y[0] + 1) % 4
    model_bytes = linear_onnx(w, b)
    onnx_runner = OnnxRunner(model_bytes)
    np_runner = NumpyRunner(w, b)
    np.testing.assert_allclose(onnx_runner.to_numpy(onnx_runner(x)), np_runner(x), rtol=1e-5, atol=1e-5)
    common = dict(example=x[:3], x_test=x, y_test=y, throughput_batches=(2, 16), warmup=1, runs=3)
    m_np = hm.measure(np_runner, name="np", params={"w": w, "b": b}, **common)
    m_ort = hm.measure(onnx_runner, name="ort", size_bytes=len(model_bytes), **common)
    for m in (m_np, m_ort):
        assert m.accuracy == pytest.approx(8 / 9)
        assert m.latency.batch_size == 1 and m.latency.runs == 3
        assert [t.batch_size for t in m.throughput] == [2, 16]
        assert m.peak_memory_bytes is None
    assert (m_np.params, m_np.size_bytes) == (20, 80)
    assert (m_ort.params, m_ort.size_bytes) == (0, len(model_bytes))


def test_measure_jax_runner_defaults_and_json_round_trip():
    params = {"w": jnp.eye(4, dtype=jnp.bfloat16), "q": np.zeros((4,), np.int8)}
    runner = hm.JaxRunner(lambda p, x: x @ p["w"].astype(jnp.float32), params)
    x, y, expected = classification_problem(n=6, classes=4, wrong=1)
    m = hm.measure(runner, name="bf16", example=x, x_test=x, y_test=y, latency_batch=None, warmup=0, runs=2)
    assert (m.params, m.size_bytes) == (20, 16 * 2 + 4)
    assert m.latency is None and m.throughput[0].batch_size == 256
    assert m.accuracy == pytest.approx(expected)
    d = m.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert hm.Measurement.from_dict(json.loads(json.dumps(d))) == m


def test_jax_runner_reports_the_device_peak():
    # jax 0.10 CPU devices return None from memory_stats(): no number is reported rather than a guess.
    if jax.default_backend() == "cpu":
        assert hm.JaxRunner(lambda p, x: x, {"w": jnp.ones(2)}).peak_memory_bytes() is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r, x: hm.latency(r, x, runs=0), "runs"),
        (lambda r, x: hm.latency(r, x, warmup=-1), "warmup"),
        (lambda r, x: hm.latency(r, x, min_time_s=-1.0), "min_time_s"),
        (lambda r, x: hm.latency(r, x[:0]), "x must not be empty"),
        (lambda r, x: hm.latency(r, np.float32(1)), "x must be an array"),
        (lambda r, x: hm.throughput(r, x, [0]), "batch_sizes"),
        (lambda r, x: hm.throughput(r, x, []), "batch_sizes"),
        (lambda r, x: hm.throughput(r, x, 4), "batch_sizes"),
        (lambda r, x: hm.throughput(r, x, [2], runs=0), "runs"),
        (lambda r, x: hm.throughput(r, x[:0], [2]), "make_input must not be empty"),
        (lambda r, x: hm.throughput(r, lambda b: x[:1], [2]), "make_input"),
        (lambda r, x: hm.accuracy(r, x, np.zeros(3)), "y must have 2 rows"),
        (lambda r, x: hm.accuracy(r, x[:0], np.zeros(0)), "x must not be empty"),
        (lambda r, x: hm.accuracy(r, x, np.zeros(2), batch_size=0), "batch_size"),
        (lambda r, x: hm.accuracy(r, x, np.zeros(2), params={}), "params must be None"),
        (lambda r, x: hm.accuracy(lambda p, x: x, x, np.zeros(2)), "params is required"),
        (lambda r, x: hm.accuracy(3, x, np.zeros(2)), "runner_or_apply"),
        (lambda r, x: hm.measure(r, name="m", example=x), "size_bytes"),
        (lambda r, x: hm.measure(r, name="m", size_bytes=1, example=x[:0]), "example"),
        (lambda r, x: hm.measure(r, name="m", size_bytes=1, example=x, x_test=x), "x_test and y_test"),
        (lambda r, x: hm.measure(r, name="m", size_bytes=1, example=x, latency_batch=0), "latency_batch"),
        (lambda r, x: hm.measure(r, name="m", size_bytes=1, example=x, throughput_batches=(0,)), "throughput_batches"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, match):
    runner = NumpyRunner(np.eye(2, dtype=np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=match):
        call(runner, np.ones((2, 2), np.float32))


def test_runner_protocol_is_structural():
    assert isinstance(NumpyRunner(None, None), hm.Runner)
    assert isinstance(hm.JaxRunner(lambda p, x: x, None), hm.Runner)
    assert not isinstance(lambda p, x: x, hm.Runner)
