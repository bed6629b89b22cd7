"""An int8 ONNX graph in QDQ form from hamjax's own quantized model.

jax2onnx has no quantize/dequantize lowering, so hamjax traces its
quantized model (:class:`hamjax.quant.QuantizedApply`) with every
quantized operand *tagged* (:func:`hamjax.export.graph.tag`), converts it,
and rewrites each tag into the standard ONNX operators:

* a weight becomes an int8 initializer (codes at the op's layout) followed
  by ``DequantizeLinear`` with its per-channel (or per-tensor) scales;
* an activation becomes ``QuantizeLinear -> DequantizeLinear`` with the
  calibrated scale and zero point (static method, uint8 for asymmetric
  activations, the layout onnxruntime's x86 kernels prefer), or
  ``DynamicQuantizeLinear -> DequantizeLinear`` (dynamic method); weight-only
  models keep float activations.

onnxruntime fuses these patterns into integer kernels (``QGemm``,
``MatMulIntegerToFloat``, ``QLinearMatMul``...). One rewrite helps it: a
``Gemm`` whose output only feeds a constant bias ``Add`` takes the bias as
its ``C`` input, quantized to int32 with scale ``activation scale x
weight scale`` (what onnxruntime's own quantizer emits), because
onnxruntime otherwise fuses ``MatMul + Add`` into a float ``Gemm`` first
and the integer fusion no longer applies.
"""

from __future__ import annotations

import itertools

import numpy as np

from hamjax import quant
from hamjax.export import graph, integer, rewrites
from hamjax.jaxpr import intercept


def _weights_at_ops(qapply, weights, example, kw) -> dict[str, np.ndarray]:
    """Each site's weight at its op (after layout ops), as the quantized model feeds it (eager)."""
    seen: dict[str, np.ndarray] = {}

    def record(i, site, a, w):
        del i
        seen[site.name] = np.asarray(w)
        return a, w

    intercept(qapply.apply_fn, record)(weights, example, **kw)
    return seen


def _weight_codes(qapply, row, w: np.ndarray) -> quant.QTensor:
    """The int8 codes of a site's weight at its op, on the grid the quantized model uses there."""
    axes = tuple(row["channel_axes"]) if qapply.per_channel else None
    codes = quant.QTensor.from_array(w, bits=8, symmetric=qapply.symmetric, channel_axes=axes or None)
    if row["weight"] is not None:  # stored: w is already on the grid; the codes must give it back
        back = np.asarray(codes.dequantize())
        err = float(np.max(np.abs(back - w)) / max(float(np.max(np.abs(w))), 1e-30))
        if err > 1e-5:
            raise graph.ExportError(
                f"export int8: site {row['name']}: its stored weight does not re-encode at the op "
                f"(relative error {err:.2e}); the path from the leaf to the op changes the channel grouping"
            )
    return codes


def _check(qapply) -> None:
    if qapply.bits != 8 or qapply.act_bits != 8:
        raise graph.ExportError(
            f"export int8: ONNX QDQ export needs 8-bit weights and activations, "
            f"got bits={qapply.bits}, act_bits={qapply.act_bits}"
        )
    if qapply.method == "dynamic" and qapply.act_symmetric:
        raise graph.ExportError(
            "export int8: dynamic symmetric activations have no ONNX operator "
            "(DynamicQuantizeLinear is asymmetric uint8); quantize with act_symmetric=False"
        )


def trace_tagged(qapply, qparams, example, *, dynamic_batch: bool = True, **kw):
    """The tagged jaxpr of the quantized model, with the int8 weight codes of every tagged site.

    Returns:
      ``(closed_jaxpr, spec, sites)`` where ``sites[j]`` is the site table
      row of tag index ``j`` with its ``codes`` (a :class:`QTensor` at the
      op's layout) added.
    """
    _check(qapply)
    weights = quant.dequantize_tree(qparams["weights"])
    spec = graph.input_spec(np.asarray(example), dynamic_batch=dynamic_batch)
    # The float model, traced as the user wrote it, names their lines; the tagged one below is re-interpreted.
    graph.check(graph.trace(lambda x: qapply.apply_fn(weights, x, **kw), spec))
    rows = {r["name"]: r for r in qapply.site_table(qparams)}
    at_ops = _weights_at_ops(qapply, weights, np.asarray(example)[:1], kw)
    sites = {}
    for j, name in enumerate(rows):
        sites[j] = dict(rows[name], codes=_weight_codes(qapply, rows[name], at_ops[name]))
    index = {name: j for j, name in enumerate(rows)}
    grids = {j: np.asarray(site["codes"].dequantize()) for j, site in sites.items()}

    def hook(i, site, a, w):
        del i
        j = index.get(site.name)
        if j is None:  # a skipped site stays float
            return a, w
        if qapply.method != "weight_only":
            a = graph.tag(a, f"a{j}")
        return a, graph.tag(grids[j].astype(w.dtype), f"w{j}")

    tagged = intercept(qapply.apply_fn, hook)
    closed = graph.trace(lambda x: tagged(weights, x, **kw), spec)
    return closed, spec, sites


def _contiguous(axes: tuple[int, ...]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(axes))


class _Rewriter:
    """Replaces tag nodes in an ONNX graph with QDQ operators."""

    def __init__(self, model, qapply, sites):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.model, self.qapply, self.sites = model, qapply, sites
        self.inits: list = []
        self.activation_scale: dict[int, float] = {}
        self.weight_scale: dict[int, np.ndarray] = {}

    def const(self, name: str, value) -> str:
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def activation(self, j: int, x: str, out: str) -> list:
        make = self.helper.make_node
        if self.qapply.method == "dynamic":
            q, s, z = f"hq_a{j}_q", f"hq_a{j}_s", f"hq_a{j}_z"
            return [make("DynamicQuantizeLinear", [x], [q, s, z]), make("DequantizeLinear", [q, s, z], [out])]
        scale, zero = (np.asarray(v, np.float32).reshape(()) for v in self.sites[j]["activation"])
        self.activation_scale[j] = float(scale)
        # The signed asymmetric grid [-128, 127] is the uint8 grid [0, 255] shifted by 128.
        z = np.int8(0) if self.qapply.act_symmetric else np.uint8(int(zero) + 128)
        s, zp = self.const(f"hq_a{j}_s", scale), self.const(f"hq_a{j}_z", z)
        q = f"hq_a{j}_q"
        return [make("QuantizeLinear", [x, s, zp], [q]), make("DequantizeLinear", [q, s, zp], [out])]

    def weight(self, j: int, out: str) -> list:
        make = self.helper.make_node
        codes = self.sites[j]["codes"]
        values = np.asarray(codes.values)
        scale = np.asarray(codes.scale, np.float32)
        zero = np.asarray(codes.zero_point).astype(np.int8)
        channel = tuple(self.sites[j]["channel_axes"]) if self.qapply.per_channel else ()
        if not channel:
            self.weight_scale[j] = scale.reshape(())
            args = [self.const(f"hq_w{j}_q", values), self.const(f"hq_w{j}_s", scale.reshape(()))]
            return [make("DequantizeLinear", [*args, self.const(f"hq_w{j}_z", zero.reshape(()))], [out])]
        if not _contiguous(channel):
            raise graph.ExportError(f"export int8: site {self.sites[j]['name']}: channel axes {channel} not adjacent")
        first, last = channel[0], channel[-1]
        merged = (*values.shape[:first], int(np.prod(values.shape[first : last + 1])), *values.shape[last + 1 :])
        self.weight_scale[j] = scale.reshape(-1)
        args = [
            self.const(f"hq_w{j}_q", values.reshape(merged)),
            self.const(f"hq_w{j}_s", scale.reshape(-1)),
            self.const(f"hq_w{j}_z", zero.reshape(-1)),
        ]
        if merged == values.shape:
            return [make("DequantizeLinear", args, [out], axis=first)]
        flat = f"hq_w{j}_flat"
        shape = self.const(f"hq_w{j}_shape", np.asarray(values.shape, np.int64))
        return [make("DequantizeLinear", args, [flat], axis=first), make("Reshape", [flat, shape], [out])]

    def rewrite(self) -> None:
        g = self.model.graph
        nodes = []
        for node in g.node:
            out = node.output[0] if node.output else ""
            if node.op_type == "Identity" and out.startswith(graph.TAG_PREFIX):
                kind, j = out[len(graph.TAG_PREFIX)], int(out[len(graph.TAG_PREFIX) + 1 :])
                nodes += self.activation(j, node.input[0], out) if kind == "a" else self.weight(j, out)
            else:
                nodes.append(node)
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(self.inits)
        self.inits = []
        if self.qapply.method == "static":
            self.fold_gemm_bias()
        graph.prune(self.model)

    def _constant(self, name: str, producers: dict, inits: dict):
        """The value of ``name`` if it is an initializer or a ``Reshape`` of initializers, else ``None``."""
        if name in inits:
            return self.numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Reshape" and all(i in inits for i in node.input[:2]):
            data, shape = (self.numpy_helper.to_array(inits[i]) for i in node.input[:2])
            return data.reshape(shape)
        return None

    def fold_gemm_bias(self) -> None:
        g = self.model.graph
        inits = {t.name: t for t in g.initializer}
        producers = {o: n for n in g.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        outputs = {o.name for o in g.output}
        folded = []  # (bias DequantizeLinear, the Add it replaces)
        for node in list(g.node):
            if node.op_type != "Gemm" or len(node.input) != 2 or node.output[0] in outputs:
                continue
            a, b = (producers.get(i) for i in node.input)
            if not (a and b and a.op_type == b.op_type == "DequantizeLinear"):
                continue
            ja, jb = (int(n.output[0][len(graph.TAG_PREFIX) + 1 :]) for n in (a, b))
            users = consumers.get(node.output[0], [])
            if len(users) != 1 or users[0].op_type != "Add" or ja not in self.activation_scale:
                continue
            add = users[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            bias = self._constant(other, producers, inits)
            width = int(np.asarray(self.sites[jb]["codes"].values).shape[-1])
            if bias is None or bias.size != width or bias.shape[-1] != width:
                continue
            if any(a.name in ("transA", "transB") and a.i for a in node.attribute):
                continue
            bias_scale = (self.activation_scale[ja] * np.broadcast_to(self.weight_scale[jb], (width,))).astype(
                np.float32
            )
            codes = np.round(bias.reshape(width).astype(np.float64) / bias_scale).astype(np.int64)
            if np.any(np.abs(codes) > 2**31 - 1):
                continue
            q = self.const(f"hq_b{jb}_q", codes.astype(np.int32))
            s = self.const(f"hq_b{jb}_s", bias_scale)
            z = self.const(f"hq_b{jb}_z", np.zeros(width, np.int32))
            folded.append((self.helper.make_node("DequantizeLinear", [q, s, z], [f"hq_b{jb}"], axis=0), add))
            node.input.append(f"hq_b{jb}")
            node.output[0] = add.output[0]
        # Protobuf messages compare by value, and each Add has its own output name.
        for dq, add in folded:
            g.node.remove(add)
            gemm = next(i for i, n in enumerate(g.node) if n.op_type == "Gemm" and dq.output[0] in n.input)
            g.node.insert(gemm, dq)
        g.initializer.extend(self.inits)
        self.inits = []


def quantized_model(
    qapply,
    qparams,
    example,
    *,
    dynamic_batch: bool = True,
    model_name: str = "hamjax_int8",
    integer_outputs: bool = True,
    **kw,
):
    """The int8 QDQ ONNX model of a quantized model (see the module docstring).

    Args:
      qapply, qparams: from :func:`hamjax.quant.quantize_model` with
        ``bits = act_bits = 8``.
      example: an input batch (its shape and dtype; the batch stays symbolic
        when ``dynamic_batch``).
      integer_outputs: with the static method, give convolutions and
        ``Gemm`` s the output quantization onnxruntime's integer kernels need
        (:func:`hamjax.export.integer.quantize_outputs`, exact); ``False``
        leaves their outputs float.
      **kw: keyword arguments of the apply function.

    Returns:
      An ``onnx.ModelProto``.

    Raises:
      ExportError: bit widths other than 8, dynamic symmetric activations,
        or a model :func:`hamjax.export.graph.check` refuses (a primitive
        jax2onnx cannot lower, random numbers, FFTs, complex arithmetic),
        named with the user's line before anything is converted.
    """
    closed, spec, sites = trace_tagged(qapply, qparams, example, dynamic_batch=dynamic_batch, **kw)
    model = graph.convert(closed, spec, model_name=model_name)
    _Rewriter(model, qapply, sites).rewrite()
    rewrites.matmul_einsums(model)
    if integer_outputs:
        rewrites.max_pools(model)
        rewrites.gemm_matmuls(model)
    if integer_outputs and qapply.method == "static":
        integer.quantize_outputs(model)
        graph.prune(model)
    return model
