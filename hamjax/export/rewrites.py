"""Op rewrites of an int8 QDQ graph into the forms onnxruntime fuses into integer kernels.

onnxruntime's int8 fusions match fixed layouts: a product with a 2-D weight
fuses as ``MatMul`` or ``Gemm``, never as ``Einsum``, which is how jax2onnx
lowers a dense layer on a 3-D input (every dense layer of a transformer)
(:func:`matmul_einsums`); a per-channel ``MatMul`` with a quantized output or
a bias fuses fully only as a ``Gemm`` (:func:`gemm_matmuls`); a max pool written as a
reshape and a reduction runs as a generic reduction, a ``MaxPool`` as its
int8 pooling kernel (:func:`max_pools`). Each rewrite computes the same values.
"""

from __future__ import annotations

import numpy as np

from hamjax.export.nodes import GraphIndex, attribute, value_shapes


def matmul_einsums(model) -> int:
    """Replace every two-operand ``Einsum`` that is a matrix product with a 2-D right operand by ``MatMul`` (in place).

    Args:
      model: an ``onnx.ModelProto``.

    Returns:
      How many were replaced.

    Examples:
      >>> from onnx import TensorProto, helper
      >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
      >>> w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 5])
      >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])
      >>> node = helper.make_node("Einsum", ["x", "w"], ["y"], equation="abc,cd->abd")
      >>> model = helper.make_model(helper.make_graph([node], "g", [x, w], [y]))
      >>> matmul_einsums(model), model.graph.node[0].op_type
      (1, 'MatMul')
    """
    done = 0
    for node in model.graph.node:
        if node.op_type != "Einsum" or len(node.input) != 2:
            continue
        equation = next(a.s.decode() for a in node.attribute if a.name == "equation").replace(" ", "")
        lhs, _, out = equation.partition("->")
        a, _, b = lhs.partition(",")
        if "." in equation or len(b) != 2 or not a or len(set(a + b[1])) != len(a) + 1:
            continue
        if a[-1] != b[0] or out != a[:-1] + b[1]:
            continue
        node.op_type = "MatMul"
        del node.attribute[:]
        done += 1
    return done


def gemm_matmuls(model) -> int:
    """Run a ``MatMul`` of a statically quantized N-D input and an int8 2-D weight as a 2-D ``Gemm`` (in place).

    onnxruntime fuses ``DQ -> MatMul -> QuantizeLinear`` into ``QLinearMatMul``
    only with one weight scale, and ``DQ -> MatMul`` into
    ``MatMulIntegerToFloat`` without its bias, so a per-channel product
    quantized right after stays float and a biased one adds its bias in a
    separate pass; ``Reshape -> Gemm -> Reshape`` fuses into ``QGemm`` (per-channel
    scales, an int32 bias, a quantized output) through the reshapes, once
    :func:`hamjax.export.integer.quantize_outputs` folds the bias in.

    Args:
      model: an int8 QDQ ``onnx.ModelProto``.

    Returns:
      How many products were rewritten.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from hamjax import quant
      >>> from hamjax.export import qdq
      >>> f = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> x = np.random.default_rng(0).uniform(size=(16, 3, 4)).astype(np.float32)
      >>> qapply, qparams = quant.quantize_model(f, {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 2))}, calibration=[x])
      >>> gemm_matmuls(qdq.quantized_model(qapply, qparams, x, integer_outputs=False))
      2
    """
    from onnx import helper

    gr = GraphIndex(model)
    done, nodes, inits = 0, [], []
    for node in gr.g.node:
        dq, perm = gr.weight_dq(node.input[1]) if node.op_type == "MatMul" else (None, None)
        quantized = gr.activation_scale(node.input[0]) is not None
        codes = gr.constant(dq.input[0]) if dq is not None else None
        if codes is None or perm is not None or codes.ndim != 2 or not quantized:
            nodes.append(node)
            continue
        a, out, stem = node.input[0], node.output[0], f"{node.output[0]}_gemm"
        # the shape of the int8 codes, where there are any: a Shape of the float input keeps its dequantization
        source = gr.producer.get(a)
        shaped = source.input[0] if source is not None and source.op_type == "DequantizeLinear" else a
        inits += [
            gr.numpy_helper.from_array(np.asarray([-1, codes.shape[0]], np.int64), f"{stem}_rows"),
            gr.numpy_helper.from_array(np.asarray([codes.shape[1]], np.int64), f"{stem}_width"),
            gr.numpy_helper.from_array(np.asarray([0], np.int64), f"{stem}_zero"),
            gr.numpy_helper.from_array(np.asarray([-1], np.int64), f"{stem}_last"),
        ]
        nodes += [
            helper.make_node("Reshape", [a, f"{stem}_rows"], [f"{stem}_a"]),
            helper.make_node("Gemm", [f"{stem}_a", node.input[1]], [f"{stem}_y"]),
            helper.make_node("Shape", [shaped], [f"{stem}_shape"]),
            helper.make_node("Slice", [f"{stem}_shape", f"{stem}_zero", f"{stem}_last"], [f"{stem}_lead"]),
            helper.make_node("Concat", [f"{stem}_lead", f"{stem}_width"], [f"{stem}_out_shape"], axis=0),
            helper.make_node("Reshape", [f"{stem}_y", f"{stem}_out_shape"], [out]),
        ]
        done += 1
    del gr.g.node[:]
    gr.g.node.extend(nodes)
    gr.g.initializer.extend(inits)
    return done


def max_pools(model) -> int:
    """Replace a ``k x k`` max pool written as ``Reshape`` + ``ReduceMax`` on NHWC by ``MaxPool`` (in place).

    hamjax's :func:`hamjax.models.cnn.max_pool_2x2` pools by reshaping
    ``(N, H, W, C)`` to ``(N, H/k, k, W/k, k, C)`` and reducing axes 2 and 4;
    onnxruntime runs that as a generic reduction, but a ``MaxPool`` between
    layout transposes as its (int8 or float) pooling kernel, and cancels the
    transposes against a convolution's. The values are the same.

    Args:
      model: an ``onnx.ModelProto`` with shape information (jax2onnx's).

    Returns:
      How many pools were replaced.

    Examples:
      >>> import numpy as np
      >>> from hamjax.export import graph
      >>> from hamjax.models.cnn import max_pool_2x2
      >>> spec = graph.input_spec(np.ones((2, 4, 4, 3), np.float32))
      >>> max_pools(graph.convert(graph.trace(max_pool_2x2, spec), spec))
      1
    """
    from onnx import helper

    gr, shapes = GraphIndex(model), value_shapes(model)
    replaced, nodes = 0, []
    for node in gr.g.node:
        reshape = gr.producer.get(node.input[0]) if node.op_type == "ReduceMax" else None
        if reshape is None or reshape.op_type != "Reshape" or attribute(node, "keepdims", 1):
            nodes.append(node)
            continue
        axes = gr.constant(node.input[1]) if len(node.input) > 1 else None
        axes = sorted(np.asarray(axes if axes is not None else [], np.int64).reshape(-1).tolist())
        x, y = shapes.get(reshape.input[0], []), shapes.get(reshape.output[0], [])
        ok = axes == [2, 4] and len(x) == 4 and len(y) == 6 and isinstance(y[2], int) and y[2] == y[4]
        ok = ok and all(isinstance(d, int) for d in (*x[1:], *y[1:])) and x[3] == y[5]
        if not (ok and x[1] == y[1] * y[2] and x[2] == y[3] * y[4]):
            nodes.append(node)
            continue
        k, out, stem = y[2], node.output[0], f"{node.output[0]}_maxpool"
        nodes += [
            helper.make_node("Transpose", [reshape.input[0]], [f"{stem}_nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("MaxPool", [f"{stem}_nchw"], [f"{stem}_out"], kernel_shape=[k, k], strides=[k, k]),
            helper.make_node("Transpose", [f"{stem}_out"], [out], perm=[0, 2, 3, 1]),
        ]
        replaced += 1
    del gr.g.node[:]
    gr.g.node.extend(nodes)
    return replaced
