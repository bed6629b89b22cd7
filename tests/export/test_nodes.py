"""An index over hand-built ONNX graphs (hamjax.export.nodes)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hamjax.export.nodes import GraphIndex, attribute, value_shapes


def _model(nodes, inputs=(), outputs=(), initializers=(), value_info=()):
    graph = helper.make_graph(nodes, "g", list(inputs), list(outputs), list(initializers), value_info=list(value_info))
    return helper.make_model(graph)


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _info(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_attribute_reads_ints_and_int_lists_and_falls_back_to_the_default():
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 1])
    assert attribute(node, "group", 1) == 2
    assert attribute(node, "strides", [1, 1]) == [2, 1]
    assert attribute(node, "dilations", [1, 1]) == [1, 1]
    assert attribute(helper.make_node("Gemm", ["a", "b"], ["c"], transA=0), "transA", 7) == 0


def test_value_shapes_reads_inputs_outputs_and_value_infos():
    model = _model(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Flatten", ["h"], ["y"])],
        inputs=[_info("x", ["B", 3, 4])],
        outputs=[_info("y", ["B", 12])],
        value_info=[_info("h", ["B", 3, 4]), _info("unranked", None)],
    )
    assert value_shapes(model) == {"x": ["B", 3, 4], "h": ["B", 3, 4], "y": ["B", 12]}


def test_value_shapes_skips_values_that_are_not_tensors():
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2])
    model = _model([], inputs=[seq, _info("x", [])], outputs=[_info("x", [])])
    assert value_shapes(model) == {"x": []}


def _index():
    """x -> Mul(x, two) -> m -> Add(m, m) -> y, with two an initializer."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["m"], name="mul"), helper.make_node("Add", ["m", "m"], ["y"])]
    model = _model(
        nodes, inputs=[_info("x", ["B", 2])], outputs=[_info("y", ["B", 2])], initializers=[_init("two", 2.0)]
    )
    return GraphIndex(model), model


def test_graph_index_knows_producers_consumers_initializers_and_outputs():
    index, model = _index()
    mul, add = model.graph.node
    assert index.g is model.graph and index.model is model
    assert set(index.inits) == {"two"} and index.inits["two"] is model.graph.initializer[0]
    assert index.producer == {"m": mul, "y": add}
    assert index.consumers == {"x": [mul], "two": [mul], "m": [add, add]}
    assert index.outputs == {"y"}
    assert index.shapes == {"x": ["B", 2], "y": ["B", 2]}


def test_constant_of_an_initializer_a_computed_value_and_a_graph_input():
    nodes = [
        helper.make_node("Mul", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "x"], ["y"]),
        helper.make_node("Neg", ["ab"], ["neg"]),
    ]
    model = _model(
        nodes,
        inputs=[_info("x", [2])],
        outputs=[_info("y", [2])],
        initializers=[_init("a", np.float32([1, 2])), _init("b", np.float32([3, 4]))],
    )
    index = GraphIndex(model)
    np.testing.assert_array_equal(index.constant("a"), [1, 2])
    np.testing.assert_array_equal(index.constant("neg"), [-3, -8])
    assert index.constant("ab").dtype == np.float32
    assert index.constant("x") is None and index.constant("y") is None and index.constant("nowhere") is None


def test_constant_stops_at_quantizers_and_shape():
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s"], ["dq"]),
        helper.make_node("QuantizeLinear", ["f", "s"], ["qf"]),
        helper.make_node("Shape", ["f"], ["shape"]),
        helper.make_node("Relu", ["dq"], ["r"]),
    ]
    inits = [_init("q", np.int8([1, -2])), _init("s", np.float32(0.5)), _init("f", np.float32([1, 2]))]
    index = GraphIndex(_model(nodes, initializers=inits))
    assert [index.constant(n) for n in ("dq", "qf", "shape", "r")] == [None] * 4
    np.testing.assert_array_equal(index.constant("f"), [1, 2])


def test_constant_caches_every_output_of_a_node_and_skips_empty_inputs():
    nodes = [
        helper.make_node("Split", ["c"], ["lo", "hi"], axis=0, num_outputs=2),
        helper.make_node("Clip", ["lo", "", "cap"], ["clipped"]),
    ]
    inits = [_init("c", np.float32([1, 5, 3, 9])), _init("cap", np.float32(4))]
    model = _model(nodes, initializers=inits)
    model.opset_import[0].version = 18
    index = GraphIndex(model)
    np.testing.assert_array_equal(index.constant("lo"), [1, 5])
    assert "hi" in index._values  # evaluated with lo, not again
    np.testing.assert_array_equal(index.constant("hi"), [3, 9])
    np.testing.assert_array_equal(index.constant("clipped"), [1, 4])


def test_constant_of_an_op_the_reference_evaluator_lacks_is_none():
    node = helper.make_node("NoSuchOp", ["c"], ["y"], domain="hamjax.test")
    index = GraphIndex(_model([node], initializers=[_init("c", np.float32(1))]))
    assert index.constant("y") is None


def _weight_graph(perms, dq_inputs=("w_q", "w_s"), extra=()):
    nodes = [helper.make_node("DequantizeLinear", list(dq_inputs), ["t0"])]
    for k, perm in enumerate(perms):
        nodes.append(helper.make_node("Transpose", [f"t{k}"], [f"t{k + 1}"], perm=perm))
    inits = [_init("w_q", np.zeros((2, 3, 4), np.int8)), _init("w_s", np.float32(0.1)), *extra]
    index = GraphIndex(_model(nodes, initializers=inits))
    return index, index.g.node


def test_weight_dq_without_a_transpose():
    index, nodes = _weight_graph([])
    dq, perm = index.weight_dq("t0")
    assert dq is nodes[0] and perm is None


@pytest.mark.parametrize("perms", [[[1, 2, 0]], [[1, 2, 0], [1, 0, 2]], [[1, 2, 0], [0, 2, 1], [1, 2, 0]]])
def test_weight_dq_composes_the_permutations_of_the_transposes_it_passes(perms):
    index, nodes = _weight_graph(perms)
    dq, perm = index.weight_dq(f"t{len(perms)}")
    assert dq is nodes[0]
    x = np.arange(24).reshape(2, 3, 4)
    want = x
    for p in perms:
        want = np.transpose(want, p)
    np.testing.assert_array_equal(np.transpose(x, perm), want)


def test_weight_dq_refuses_a_dequantized_activation_and_other_producers():
    index, _ = _weight_graph([[1, 0, 2]], dq_inputs=("x", "w_s"))
    assert index.weight_dq("t1") == (None, None)
    relu = helper.make_node("Relu", ["w_q"], ["r"])
    index = GraphIndex(_model([relu], initializers=[_init("w_q", np.float32([1]))]))
    assert index.weight_dq("r") == (None, None) and index.weight_dq("w_q") == (None, None)


def _activation(scale, layout=("Identity", "Reshape", "Transpose")):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"])]
    nodes.append(helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["a0"]))
    for k, op in enumerate(layout):
        extra = ["shape"] if op == "Reshape" else []
        nodes.append(helper.make_node(op, [f"a{k}", *extra], [f"a{k + 1}"]))
    inits = [_init("s", np.float32(scale)), _init("z", np.int8(0)), _init("shape", np.int64([-1]))]
    return GraphIndex(_model(nodes, initializers=inits)), f"a{len(layout)}"


def test_activation_scale_through_layout_ops():
    index, name = _activation(0.25)
    assert index.activation_scale(name) == 0.25
    assert index.activation_scale("a0") == 0.25


def test_activation_scale_is_none_for_a_per_channel_scale_a_weight_or_another_op():
    index, name = _activation([0.25, 0.5])
    assert index.activation_scale(name) is None
    index, _ = _weight_graph([])
    assert index.activation_scale("t0") is None  # a DequantizeLinear of an initializer is a weight
    index, name = _activation(0.25, layout=("Relu",))
    assert index.activation_scale(name) is None and index.activation_scale("x") is None
