"""Op rewrites into the forms onnxruntime fuses into integer kernels."""

import jax.numpy as jnp
import numpy as np

from hamjax.export import rewrites, runtime


def _x(shape, rows=256, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(rows, *shape)).astype(np.float32)


def test_only_matrix_product_einsums_become_matmul():
    from onnx import TensorProto, helper

    def model(equation, a, b, out):
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("a", a), ("b", b))]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out)
        node = helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)
        return helper.make_model(helper.make_graph([node], "g", inputs, [y]))

    assert rewrites.matmul_einsums(model("abc,cd->abd", [2, 3, 4], [4, 5], [2, 3, 5])) == 1
    for args in (("abc,dc->abd", [2, 3, 4], [5, 4], [2, 3, 5]), ("abc,abd->acd", [2, 3, 4], [2, 3, 5], [2, 4, 5])):
        assert rewrites.matmul_einsums(model(*args)) == 0


def test_reshape_max_pools_become_maxpool_with_the_same_values():
    from hamjax.export import graph
    from hamjax.models.cnn import max_pool_2x2

    x = _x((6, 8, 3), 4)
    spec = graph.input_spec(x)
    model = graph.convert(graph.trace(max_pool_2x2, spec), spec)
    assert rewrites.max_pools(model) == 1
    assert "MaxPool" in {n.op_type for n in model.graph.node}
    graph.prune(model)
    np.testing.assert_array_equal(runtime.Session(model)(x), np.asarray(max_pool_2x2(jnp.asarray(x))))
