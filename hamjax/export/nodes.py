"""An index over an ONNX graph (who produces and consumes each value, which values are constants) for rewrites."""

from __future__ import annotations

import numpy as np


def attribute(node, name: str, default):
    """The integer or integer-list attribute ``name`` of ``node``, or ``default``.

    Examples:
      >>> from onnx import helper
      >>> attribute(helper.make_node("Gemm", ["a", "b"], ["c"], transB=1), "transB", 0)
      1
    """
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.i
    return default


def value_shapes(model) -> dict[str, list]:
    """Each typed value's dimensions (ints, or names for symbolic ones), from the graph's value infos.

    Args:
      model: an ``onnx.ModelProto``.

    Returns:
      ``{value name: [dim, ...]}``.

    Examples:
      >>> from onnx import TensorProto, helper
      >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])
      >>> value_shapes(helper.make_model(helper.make_graph([], "g", [x], [x])))
      {'x': ['B', 3]}
    """
    g = model.graph
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in (*g.value_info, *g.input, *g.output)
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }


class GraphIndex:
    """Producers, consumers, initializers and constant values of an ONNX graph, for rewrites that read it.

    Build a new one after changing the graph.

    Args:
      model: an ``onnx.ModelProto``.

    Attributes:
      g: the graph; inits: ``{name: TensorProto}``; producer: ``{value: node}``;
      consumers: ``{value: [nodes]}``; outputs: the graph's output names;
      shapes: :func:`value_shapes`.

    Examples:
      >>> from onnx import TensorProto, helper, numpy_helper
      >>> import numpy as np
      >>> two = numpy_helper.from_array(np.float32(2.0), "two")
      >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
      >>> node = helper.make_node("Mul", ["two", "two"], ["y"])
      >>> index = GraphIndex(helper.make_model(helper.make_graph([node], "g", [], [y], [two])))
      >>> float(index.constant("y")), index.producer["y"].op_type
      (4.0, 'Mul')
    """

    def __init__(self, model):
        from onnx import numpy_helper

        self.numpy_helper = numpy_helper
        self.model = model
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.g.output}
        self.shapes = value_shapes(model)
        self._values: dict[str, np.ndarray | None] = {}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it depends on initializers only (quantizers excluded), else ``None``."""
        if name in self._values:
            return self._values[name]
        self._values[name] = None  # a cycle guard; graphs are acyclic
        value = None
        if name in self.inits:
            value = self.numpy_helper.to_array(self.inits[name])
        else:
            node = self.producer.get(name)
            if node is not None and node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Shape"):
                inputs = [self.constant(i) if i else None for i in node.input]
                if all(v is not None for i, v in zip(node.input, inputs, strict=True) if i):
                    value = self._evaluate(node, inputs)
        self._values[name] = value
        return value

    def _evaluate(self, node, inputs):  # one node on constant inputs
        from onnx.reference import ReferenceEvaluator

        try:
            outs = ReferenceEvaluator(node).run(None, {i: v for i, v in zip(node.input, inputs, strict=True) if i})
        except Exception:  # an op the reference evaluator lacks: not a constant we can use
            return None
        for name, value in zip(node.output, outs, strict=False):
            self._values[name] = np.asarray(value)
        return np.asarray(outs[0])

    def weight_dq(self, name: str):
        """``(DequantizeLinear node, perm)`` when ``name`` is a DQ of initializers through transposes only."""
        perm = None
        node = self.producer.get(name)
        while node is not None and node.op_type == "Transpose":
            p = next(list(a.ints) for a in node.attribute if a.name == "perm")
            perm = p if perm is None else [p[k] for k in perm]
            node = self.producer.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear" or not all(i in self.inits for i in node.input):
            return None, None
        return node, perm

    def activation_scale(self, name: str) -> float | None:
        """The per-tensor scale of ``name`` when it is a DQ of an activation (through layout ops)."""
        node = self.producer.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):
            node = self.producer.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] in self.inits:
            return None
        scale = self.constant(node.input[1])
        return float(scale) if scale is not None and scale.size == 1 else None
