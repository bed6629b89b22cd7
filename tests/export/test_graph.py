"""Tracing to a jaxpr with a symbolic batch and converting through jax2onnx."""

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hamjax.export import graph


def _session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(1, 4)), jnp.float32),
    }


def test_symbolic_batch_runs_any_batch():
    p = _params()
    fn = lambda x: jnp.tanh(x @ p["w"] + p["b"])  # noqa: E731
    spec = graph.input_spec(np.zeros((3, 6), np.float32))
    model = graph.convert(graph.trace(fn, spec), spec)
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
    session = _session(model)
    for rows in (1, 7, 300):
        x = np.random.default_rng(rows).normal(size=(rows, 6)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"input": x})[0], fn(x), rtol=1e-5, atol=1e-6)


def test_static_batch_is_fixed():
    spec = graph.input_spec(np.zeros((3, 6), np.float32), dynamic_batch=False)
    assert spec.shape == (3, 6)
    model = graph.convert(graph.trace(lambda x: x * 2.0, spec), spec)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


def test_tag_names_the_identity_output():
    spec = graph.input_spec(np.zeros((2, 3), np.float32))
    model = graph.convert(graph.trace(lambda x: graph.tag(x * 3.0, "marked") + 1.0, spec), spec)
    (node,) = [n for n in model.graph.node if n.output[0] == graph.TAG_PREFIX + "marked"]
    assert node.op_type == "Identity"
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(_session(model).run(None, {"input": x})[0], 4.0)


def test_tag_is_identity_in_jax_and_under_jit():
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(graph.tag(x, "t"), x)
    np.testing.assert_array_equal(jax.jit(lambda v: graph.tag(v, "t") * 2)(x), 2 * x)


def test_tag_rejects_a_name_that_is_not_an_identifier():
    with pytest.raises(ValueError, match="identifier"):
        graph.tag(jnp.ones(2), "not a name")


def test_scalar_example_is_rejected():
    with pytest.raises(graph.ExportError, match="batch axis"):
        graph.input_spec(np.float32(1.0))


def test_a_model_with_two_outputs_is_rejected():
    spec = graph.input_spec(np.zeros((2, 3), np.float32))
    with pytest.raises(graph.ExportError, match="one array"):
        graph.trace(lambda x: (x, x), spec)


def test_a_tracing_failure_names_the_input():
    spec = graph.input_spec(np.zeros((2, 3), np.float32))
    with pytest.raises(graph.ExportError, match=r"tracing the model on input \(B, 3\)"):
        graph.trace(lambda x: x @ jnp.ones((5, 2)), spec)


_unknown_p = jcore.Primitive("hamjax_test_unlowerable")
_unknown_p.def_impl(lambda x: x)
_unknown_p.def_abstract_eval(lambda aval: aval)


def _uses_unknown(x):
    return _unknown_p.bind(x) + 1.0  # the line the error must name


def test_an_unlowerable_primitive_is_named_with_its_source_line():
    spec = graph.input_spec(np.zeros((2, 3), np.float32))
    closed = graph.trace(lambda x: jax.jit(_uses_unknown)(x), spec)
    assert any("hamjax_test_unlowerable" in u for u in graph.unsupported(closed))
    with pytest.raises(graph.ExportError, match=r"hamjax_test_unlowerable at .*test_graph\.py:\d+ \(_uses_unknown\)"):
        graph.convert(closed, spec)


def test_export_leaves_jit_caches_usable():
    p = _params()
    fn = jax.jit(lambda x: jnp.tanh(x @ p["w"]))
    x = np.ones((5, 6), np.float32)
    before = np.asarray(fn(x))
    spec = graph.input_spec(x, dynamic_batch=False)
    graph.convert(graph.trace(fn, spec), spec)
    np.testing.assert_array_equal(fn(x), before)
    np.testing.assert_array_equal(fn(np.ones((2, 6), np.float32)), before[:2])


def test_float16_gemm_loads_in_onnxruntime():
    p = jax.tree.map(lambda a: a.astype(jnp.float16), _params())
    fn = lambda x: (x.astype(jnp.float16) @ p["w"] + p["b"]).astype(jnp.float32)  # noqa: E731
    spec = graph.input_spec(np.zeros((3, 6), np.float32))
    model = graph.convert(graph.trace(fn, spec), spec)
    assert all(len(n.input) == 2 for n in model.graph.node if n.op_type == "Gemm")
    x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(_session(model).run(None, {"input": x})[0], fn(x), rtol=1e-2, atol=1e-2)


def test_prune_drops_dead_nodes_and_initializers():
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("Add", ["x", "one"], ["y"]),
        helper.make_node("Mul", ["x", "two"], ["dead"]),
    ]
    inits = [numpy_helper.from_array(np.float32(1), "one"), numpy_helper.from_array(np.float32(2), "two")]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        inits,
    )
    model = helper.make_model(g)
    graph.prune(model)
    assert [n.op_type for n in model.graph.node] == ["Add"]
    assert [t.name for t in model.graph.initializer] == ["one"]


def test_tag_is_identity_under_vmap_and_grad():
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(jax.vmap(lambda v: graph.tag(v, "t"))(x), x)
    np.testing.assert_array_equal(jax.grad(lambda v: (graph.tag(v, "t") ** 2).sum())(x), 2 * x)


@pytest.mark.parametrize(
    ("window", "strides", "padding"),
    [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"), ((3, 2), (1, 2), "VALID")],
)
def test_pooling_windows_export_as_gathers(window, strides, padding):
    from flax import nnx

    def fn(x):
        with jax.numpy_dtype_promotion("standard"):  # Flax's avg_pool divides by a NumPy integer window size
            average = nnx.avg_pool(x, window, strides=strides, padding=padding)
        return nnx.max_pool(x, window, strides=strides, padding=padding) - average

    x = np.random.default_rng(0).normal(size=(3, 9, 8, 2)).astype(np.float32)
    spec = graph.input_spec(x)
    closed = graph.trace(fn, spec)
    assert not graph._has_pool(closed.jaxpr)
    model = graph.convert(closed, spec)
    assert not {"MaxPool", "AveragePool"} & {n.op_type for n in model.graph.node}
    np.testing.assert_allclose(_session(model).run(None, {"input": x})[0], fn(x), rtol=1e-5, atol=1e-6)
