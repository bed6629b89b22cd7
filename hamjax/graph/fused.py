"""The fused attention op: ``jax.nn.dot_product_attention`` kept as one equation of a jaxpr.

:func:`hamjax.graph.fuse_attention` rewrites a model's explicit attention
to :data:`attention_p`; jit, vmap and grad see ``jax.nn.dot_product_attention``
(XLA's implementation, or cuDNN's), and the ONNX exporter finds the op and
writes it as one ``Attention`` operator (:mod:`hamjax.export.attention`).
"""

from __future__ import annotations

import functools

import jax
import jax.extend.core as jcore
from jax.interpreters import ad, batching, mlir

from hamjax.jaxpr import call_body

IMPLEMENTATIONS = (None, "xla", "cudnn")
"""The values of ``implementation=``, as ``jax.nn.dot_product_attention`` takes them."""


def _dpa(q, k, v, *extras, scale, has_bias, has_mask, implementation):
    bias = extras[0] if has_bias else None
    mask = extras[-1] if has_mask else None
    return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, implementation=implementation)


attention_p = jcore.Primitive("hamjax_attention")
"""``jax.nn.dot_product_attention(q, k, v, bias, mask, scale=, implementation=)`` as one primitive.

Operands ``q (B, T, N, H)``, ``k``, ``v (B, S, N, H)`` and, per ``has_bias``
and ``has_mask``, a float bias and a boolean mask broadcastable to
``(B, N, T, S)``; params ``scale``, ``has_bias``, ``has_mask``,
``implementation``. It stays one equation in a jaxpr, which the ONNX
exporter lowers to ONNX ``Attention``; jit, vmap and grad go through
``jax.nn.dot_product_attention``.
"""
attention_p.def_impl(_dpa)
attention_p.def_abstract_eval(lambda q, k, v, *extras, **params: jax.core.ShapedArray(q.shape, q.dtype))
mlir.register_lowering(attention_p, mlir.lower_fun(_dpa, multiple_results=False))


def _jvp(primals, tangents, **params):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    if params["has_mask"]:  # a boolean mask has no tangent
        primals, mask, tangents = primals[:-1], primals[-1], tangents[:-1]
        return jax.jvp(lambda *a: _dpa(*a, mask, **params), tuple(primals), tuple(tangents))
    return jax.jvp(functools.partial(_dpa, **params), tuple(primals), tuple(tangents))


def _batch(args, dims, **params):
    return jax.vmap(functools.partial(_dpa, **params), in_axes=tuple(dims))(*args), 0


ad.primitive_jvps[attention_p] = _jvp
batching.primitive_batchers[attention_p] = _batch


def fused_attention(q, k, v, bias=None, mask=None, *, scale: float, implementation=None):
    """Bind :data:`attention_p`: ``jax.nn.dot_product_attention`` kept as one equation.

    Args:
      q: ``(B, T, N, H)``.
      k, v: ``(B, S, N, H)``, the dtype of ``q``.
      bias: ``None`` or a float array broadcastable to ``(B, N, T, S)``.
      mask: ``None`` or a boolean array broadcastable to ``(B, N, T, S)``
        (``True`` attends).
      scale: the logits' scale (``1 / sqrt(H)`` in most models).
      implementation: ``None``, ``"xla"`` or ``"cudnn"``.

    Returns:
      ``(B, T, N, H)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.graph import fused_attention
      >>> q = jnp.ones((2, 5, 3, 4))
      >>> y = fused_attention(q, q, q, scale=0.5)
      >>> y.shape, bool(jnp.allclose(y, jax.nn.dot_product_attention(q, q, q, scale=0.5)))
      ((2, 5, 3, 4), True)
    """
    extras = [x for x in (bias, mask) if x is not None]
    return attention_p.bind(
        q,
        k,
        v,
        *extras,
        scale=float(scale),
        has_bias=bias is not None,
        has_mask=mask is not None,
        implementation=implementation,
    )


def count(closed) -> int:
    """How many :data:`attention_p` equations ``closed`` (a ``ClosedJaxpr`` or ``Jaxpr``) holds, calls included.

    Args:
      closed: a traced function.

    Returns:
      The number of fused attentions.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.graph import fused
      >>> q = jnp.ones((1, 2, 1, 4))
      >>> fused.count(jax.make_jaxpr(lambda q: fused.fused_attention(q, q, q, scale=0.5))(q))
      1
    """
    jaxpr = getattr(closed, "jaxpr", closed)
    total = 0
    for e in jaxpr.eqns:
        total += e.primitive.name == attention_p.name
        sub = call_body(e)
        total += count(sub[0]) if sub is not None else 0
    return total
