"""Attention in the ONNX graph as one ``Attention`` operator, which onnxruntime runs as one fused kernel.

jax2onnx lowers a model's explicit attention op by op (an ``Einsum`` for
each product, the softmax as ``ReduceMax``, ``Sub``, ``Exp``,
``ReduceSum``, ``Div`` and the broadcasts between them), and onnxruntime's
CPU provider fuses none of it. Before conversion, :func:`lower` finds the
attentions of the traced model with :mod:`hamjax.graph.attention` (the
matcher of :func:`hamjax.graph.fuse_attention`; a model fused already
holds them as :data:`~hamjax.graph.attention.attention_p`) and the
converter writes each as the standard ONNX ``Attention`` operator (opset
23: inputs ``(B, N, T, H)``, the scale as an attribute, a bias or boolean
mask as ``attn_mask``), which onnxruntime's CPU provider implements in
float32 and float16.

Integer attention: the query, key, value and output projections stay
``MatMul``/``Gemm`` sites outside the operator, so the int8 export
quantizes them as before; the two products inside ``Attention`` (of two
activations, never sites) stay float.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.core as jcore
import numpy as np

from hamjax.graph import attention
from hamjax.jaxpr import call_body, intercept

OPERATOR = "Attention"
"""The ONNX operator (default domain, opset 23) a fused attention becomes."""


def _has_attention(jaxpr) -> bool:
    if attention.matches(jaxpr):
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


@functools.cache
def register_plugin() -> None:
    """Teach jax2onnx to write :data:`~hamjax.graph.attention.attention_p` as ONNX ``Attention`` (once)."""
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
        jaxpr_primitive=attention.attention_p.name,
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
