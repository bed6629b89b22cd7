"""Attention in the ONNX graph as one ``Attention`` operator, which onnxruntime runs as one fused kernel.

jax2onnx lowers a model's explicit attention op by op (an ``Einsum`` for
each product, the softmax as ``ReduceMax``, ``Sub``, ``Exp``,
``ReduceSum``, ``Div`` and the broadcasts between them), and onnxruntime's
CPU provider fuses none of it. Before conversion, :func:`lower` finds the
attentions of the traced model with :mod:`hamjax.graph.attention` (the
matcher of :func:`hamjax.graph.fuse_attention`; a model fused already
holds them as :data:`~hamjax.graph.fused.attention_p`, and so does a
call of ``jax.nn.dot_product_attention`` traced under
:func:`whole_dot_product_attention`) and the
converter writes each as the standard ONNX ``Attention`` operator (opset
23: inputs ``(B, N, T, H)``, or the unsplit ``(B, T, N * H)`` projections
after :func:`simplify`; the scale as an attribute, a bias or boolean mask
as ``attn_mask``), which onnxruntime's CPU provider implements in
float32 and float16.

Integer attention: the query, key, value and output projections stay
``MatMul``/``Gemm`` sites outside the operator, so the int8 export
quantizes them as before; the two products inside ``Attention`` (of two
activations, never sites) stay float.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.extend.core as jcore
import numpy as np

from hamjax.graph import attention, fused, patterns
from hamjax.jaxpr import call_body, intercept

OPERATOR = "Attention"
"""The ONNX operator (default domain, opset 23) a fused attention becomes."""


def _has_attention(jaxpr) -> bool:
    if patterns.matches(jaxpr):
        return True
    return any((sub := call_body(e)) is not None and _has_attention(sub[0]) for e in jaxpr.eqns)


def lower(closed: jcore.ClosedJaxpr, spec: jax.ShapeDtypeStruct) -> jcore.ClosedJaxpr:
    """``closed`` with every attention it computes op by op as one fused-attention equation.

    Args:
      closed: a traced model of one input (:func:`hamjax.export.graph.trace`).
      spec: its input.

    Returns:
      The rewritten jaxpr, or ``closed`` itself when it has no attention to fuse.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from hamjax.export import attention, graph
      >>> spec = graph.input_spec(np.ones((2, 3, 4), np.float32))
      >>> f = lambda x: jax.nn.softmax(x @ jnp.swapaxes(x, 1, 2) / 2.0) @ x
      >>> "hamjax_attention" in str(attention.lower(graph.trace(f, spec), spec))
      True
    """
    if not _has_attention(closed.jaxpr):
        return closed
    run = jcore.jaxpr_as_fun(closed)
    fused = intercept(lambda _, x: run(x)[0], rewrite=attention.spans)
    return jax.make_jaxpr(lambda x: fused({}, x))(spec)


@contextlib.contextmanager
def whole_dot_product_attention():
    """While tracing for export, ``jax.nn.dot_product_attention`` is one equation, written as one ``Attention``.

    Models that call ``jax.nn.dot_product_attention`` (Flax NNX's
    ``MultiHeadAttention`` does) would otherwise reach the converter as its
    XLA implementation, op by op. Inside this context, calls with 4-D
    inputs, as many key as query heads, a static scale and no causal flag,
    sequence lengths or local window bind
    :data:`~hamjax.graph.fused.attention_p` (the same function); others run
    as before. (jax2onnx patches the same function during its own tracing,
    which hamjax's export, tracing first, never reaches.)

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.export import attention
      >>> q = jnp.ones((1, 4, 2, 8))
      >>> with attention.whole_dot_product_attention():
      ...     closed = jax.make_jaxpr(lambda q: jax.nn.dot_product_attention(q, q, q))(q)
      >>> [e.primitive.name for e in closed.jaxpr.eqns]
      ['hamjax_attention']
    """
    register_plugin()
    original = jax.nn.dot_product_attention

    @functools.wraps(original)
    def whole(query, key, value, bias=None, mask=None, *, scale=None, **kw):
        shapes = [getattr(a, "shape", ()) for a in (query, key, value)]
        plain = (
            not any(v for k, v in kw.items() if k != "implementation")
            and all(len(sh) == 4 for sh in shapes)
            and shapes[1] == shapes[2]
            and shapes[0][2] == shapes[1][2]
            and (scale is None or isinstance(scale, (int, float)))
        )
        if not plain:
            return original(query, key, value, bias, mask, scale=scale, **kw)
        scale = 1.0 / math.sqrt(shapes[0][3]) if scale is None else float(scale)
        return fused.fused_attention(query, key, value, bias, mask, scale=scale)

    jax.nn.dot_product_attention = whole
    try:
        yield
    finally:
        jax.nn.dot_product_attention = original


@functools.cache
def register_plugin() -> None:
    """Teach jax2onnx to write :data:`~hamjax.graph.fused.attention_p` as ONNX ``Attention`` (once)."""
    import onnx_ir as ir
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape, _to_ir_dim_for_shape
    from jax2onnx.plugins.jax.lax._index_utils import _builder_op
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    def op(ctx, op_type, inputs, shape, dtype, hint, **attributes):
        dims = [_to_ir_dim_for_shape(d) for d in shape]
        return _builder_op(ctx, op_type, inputs, name_hint=hint, dtype=dtype, shape=dims, attributes=attributes)

    def heads_first(shape):
        return (shape[0], shape[2], shape[1], shape[3])

    @register_primitive(
        jaxpr_primitive=fused.attention_p.name,
        since="hamjax",
        context="hamjax",
        component="attention",
        testcases=[],
    )
    class _AttentionPlugin(PrimitiveLeafPlugin):
        def lower(self, ctx, eqn) -> None:
            params = eqn.params
            q_var = eqn.invars[0]
            dtype = ctx.get_value_for_var(q_var, name_hint=ctx.fresh_name("attn_q")).type.dtype
            ins = []
            for var in eqn.invars[:3]:
                value = ctx.get_value_for_var(var, name_hint=ctx.fresh_name("attn_in"))
                shape = heads_first(tuple(var.aval.shape))
                ins.append(op(ctx, "Transpose", [value], shape, dtype, "attn_bnth", perm=[0, 2, 1, 3]))
            extras = [ctx.get_value_for_var(v, name_hint=ctx.fresh_name("attn_mask")) for v in eqn.invars[3:]]
            if params["has_bias"] and params["has_mask"]:
                bias, mask = extras
                np_dtype = np.dtype(eqn.invars[3].aval.dtype)
                low = ctx.builder.add_initializer_from_array(
                    name=ctx.fresh_name("attn_masked"), array=np.asarray(-0.7 * np.finfo(np_dtype).max, np_dtype)
                )
                shape = np.broadcast_shapes(tuple(eqn.invars[3].aval.shape), tuple(eqn.invars[4].aval.shape))
                extras = [op(ctx, "Where", [mask, bias, low], shape, bias.type.dtype, "attn_bias")]
            out_var = eqn.outvars[0]
            shape = heads_first(tuple(out_var.aval.shape))
            y = op(ctx, "Attention", [*ins, *extras], shape, dtype, "attn_y", scale=float(params["scale"]))
            out = op(ctx, "Transpose", [y], tuple(out_var.aval.shape), dtype, "attn_out", perm=[0, 2, 1, 3])
            out.type = ir.TensorType(dtype)
            _stamp_type_and_shape(out, tuple(out_var.aval.shape))
            _ensure_value_metadata(ctx, out)
            ctx.bind_value_for_var(out_var, out)

    del _AttentionPlugin


def _dims(value_info: dict, name: str):
    shape = value_info.get(name)
    return None if shape is None else [d.dim_param if d.HasField("dim_param") else d.dim_value for d in shape.dim]


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _heads_source(node_input: str, producers: dict, value_info: dict):
    """``(x, N)`` if ``node_input`` is ``Transpose[0,2,1,3](Reshape(x))`` with ``x (B, T, N * H)``; else None."""
    t = producers.get(node_input)
    if t is None or t.op_type != "Transpose" or _perm(t) != [0, 2, 1, 3]:
        return None
    r = producers.get(t.input[0])
    while r is not None and r.op_type == "Identity":
        r = producers.get(r.input[0])
    if r is None or r.op_type != "Reshape":
        return None
    source, split = _dims(value_info, r.input[0]), _dims(value_info, r.output[0])
    if source is None or split is None or len(source) != 3 or len(split) != 4 or source[:2] != split[:2]:
        return None
    n, h, c = split[2], split[3], source[2]
    if not all(isinstance(d, int) and d > 0 for d in (n, h, c)) or n * h != c:
        return None
    return r.input[0], n


def _merged_output(name: str, consumers: dict, value_info: dict):
    """The ``Reshape`` that turns ``name`` (``(B, N, T, H)``) into ``(B, T, N * H)`` through Transposes; else None."""
    perm = [0, 1, 2, 3]
    while True:
        users = consumers.get(name, [])
        reshapes = [u for u in users if u.op_type == "Reshape" and u.input[0] == name]
        transposes = [u for u in users if u.op_type == "Transpose"]
        if len(users) == 1 and transposes:
            perm = [perm[p] for p in _perm(transposes[0])]
            name = transposes[0].output[0]
            continue
        if perm != [0, 2, 1, 3] or len(reshapes) != 1 or any(u.op_type not in ("Reshape", "Shape") for u in users):
            return None
        before, after = _dims(value_info, name), _dims(value_info, reshapes[0].output[0])
        if before is None or after is None or len(after) != 3 or after[:2] != before[:2]:
            return None
        return reshapes[0]


def simplify(model) -> int:
    """Let each ``Attention`` of ``model`` read and write the ``(B, T, N * H)`` tensors around it (in place).

    A model that splits its projections into heads
    (``(B, T, C) -> (B, T, N, H)``) and merges them back gives each
    ``Attention`` a ``Reshape`` and a ``Transpose`` per input and after its
    output; ONNX ``Attention`` takes the unsplit ``(B, T, C)`` tensors itself
    (attributes ``q_num_heads``, ``kv_num_heads``), so those nodes go.
    An ``Attention`` whose inputs or output are laid out otherwise is left
    as it is.

    Args:
      model: an ``onnx.ModelProto`` from :func:`hamjax.export.graph.convert`.

    Returns:
      How many ``Attention`` nodes now read and write 3-D tensors.
    """
    from onnx import helper

    from hamjax.export.graph import prune

    g = model.graph
    value_info = {v.name: v.type.tensor_type.shape for v in [*g.value_info, *g.input, *g.output]}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    done, replaced = 0, []
    for node in g.node:
        if node.op_type != OPERATOR or node.domain not in ("", "ai.onnx"):
            continue
        sources = [_heads_source(i, producers, value_info) for i in node.input[:3]]
        out = _merged_output(node.output[0], consumers, value_info)
        if any(s is None for s in sources) or out is None:
            continue
        for k, (x, _) in enumerate(sources):
            node.input[k] = x
        node.attribute.extend(
            [helper.make_attribute("q_num_heads", sources[0][1]), helper.make_attribute("kv_num_heads", sources[1][1])]
        )
        old = node.output[0]
        node.output[0] = out.output[0]
        replaced.append(out)
        kept = [v for v in g.value_info if v.name != old]
        del g.value_info[:]
        g.value_info.extend(kept)
        done += 1
    for reshape in replaced:  # its output is the Attention's now
        g.node.remove(reshape)
    if done:
        prune(model)
    return done
