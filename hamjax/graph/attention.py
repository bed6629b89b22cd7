"""Attention fusion: explicit ``softmax(q k^T * scale + bias) v`` in any model, rewritten to one fused op.

A model that computes attention with matrix products and a softmax (the
reference ViT and HAMNet, ``flax.linen.MultiHeadDotProductAttention``,
a hand-written ``jax.numpy`` function) is traced to
its jaxpr and every attention found there is replaced by
:data:`hamjax.graph.fused.attention_p`, a primitive whose meaning and lowering are
``jax.nn.dot_product_attention`` (XLA's implementation on the CPU; cuDNN's
on a GPU with ``implementation="cudnn"`` or where JAX picks it). What is
matched, in the jaxpr:

* ``s = dot_general(q, k)`` over one contracted axis, with any batch axes
  (heads, batch; the last batch axis becomes the head axis) and one free
  axis each (the query and key positions); ``q`` may be pre-scaled by a
  scalar;
* then, in any order, scalar multiplications and divisions (the scale),
  additions of any array (an additive mask or a positional bias) and
  dtype casts or ``checkpoint_name`` markers, and last a ``jnp.where``
  mask whose fill is a constant ``<= -1e4`` (``-inf``, ``finfo.min``);
* a softmax over the key axis: ``exp(s - max(s)) / sum(...)`` as
  ``jax.nn.softmax`` lowers it (the max may be missing or behind
  ``stop_gradient``);
* ``dot_general(p, v)`` contracting the key axis over the same batch axes,
  with ``v`` shaped like ``k``.

Flax NNX's ``MultiHeadAttention`` calls ``jax.nn.dot_product_attention``
already: there is nothing to fuse (its export still gets one ONNX
``Attention``, :mod:`hamjax.export.attention`). Intermediate values used
elsewhere (probabilities the model returns) stop a match. Values the model marked with ``checkpoint_name`` inside a fused
attention (the probabilities the ViT marks for attention transfer) are no
longer computed, so :func:`hamjax.jaxpr.capture` cannot read them from the
fused model. A fully masked row gives uniform weights where the original
``-inf`` fill gives NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_choice
from hamjax.graph.fused import IMPLEMENTATIONS, fused_attention
from hamjax.graph.patterns import Match, matches
from hamjax.jaxpr import Span, intercept


def _to_btnh(x, axes):
    batch, pos, feat = axes
    nb = len(batch)
    perm = (*batch[:-1], pos, batch[-1], feat) if nb >= 2 else (*batch, pos, feat)
    if perm != tuple(range(x.ndim)):
        x = jnp.transpose(x, perm)
    if nb > 2:
        return x.reshape(math.prod(x.shape[: nb - 1]), *x.shape[nb - 1 :])
    if nb == 1:
        return x[:, :, None, :]
    return x[None, :, None, :] if nb == 0 else x


def _to_bnts(x, nb: int, key_last: bool, full_batch):
    if x.ndim == 0:
        return x.reshape(1, 1, 1, 1)
    if not key_last:
        x = jnp.swapaxes(x, -1, -2)
    if nb > 2:
        if x.shape[: nb - 1] != tuple(full_batch[: nb - 1]) and any(d != 1 for d in x.shape[: nb - 1]):
            x = jnp.broadcast_to(x, (*full_batch, *x.shape[nb:]))
        return x.reshape(math.prod(x.shape[: nb - 1]), *x.shape[nb - 1 :])
    if nb == 1:
        return x[:, None]
    return x[None, None] if nb == 0 else x


def _static(x) -> float | None:
    if isinstance(x, jax.core.Tracer):
        return None
    return float(np.asarray(x))


def _span(m: Match, implementation, record=None) -> Span:
    bias_vars = [b for b, _, _ in m.biases]
    factor_vars = [f for f, _ in m.factors]
    inputs = (m.q, m.k, m.v, *bias_vars, *([m.mask[0]] if m.mask else []), *factor_vars)
    nb = len(m.q_axes[0])

    def fn(q, k, v, *rest):
        biases, rest = rest[: len(bias_vars)], rest[len(bias_vars) :]
        pred, rest = (rest[0], rest[1:]) if m.mask else (None, rest)
        factors = []
        for value, (_, divide) in zip(rest, m.factors, strict=True):
            s = _static(value)
            factors.append((1.0 / value if divide else value) if s is None else (1.0 / s if divide else s))
        scale = math.prod(f for f in factors if isinstance(f, float))
        traced = [f for f in factors if not isinstance(f, float)]
        full_batch = tuple(q.shape[a] for a in m.q_axes[0])
        bias = None
        for value, (_, after, negate) in zip(biases, m.biases, strict=True):
            term = -jnp.asarray(value) if negate else jnp.asarray(value)
            for f in factors[:after]:
                term = term * jnp.asarray(f, term.dtype)
            term = _to_bnts(term, nb, m.key_last, full_batch)
            bias = term if bias is None else bias + term
        mask = None
        if pred is not None:
            mask = _to_bnts(pred if m.mask[1] else jnp.logical_not(pred), nb, m.key_last, full_batch)
        q4 = _to_btnh(q, m.q_axes)
        for f in traced:
            q4 = q4 * jnp.asarray(f, q4.dtype)
        k4, v4 = _to_btnh(k, m.k_axes), _to_btnh(v, m.v_axes)
        if bias is not None:
            bias = bias.astype(q4.dtype)
        if record is not None:
            record.append(FoundAttention(tuple(q4.shape), int(k4.shape[1]), bias is not None, mask is not None, scale))
        y = fused_attention(q4, k4, v4, bias, mask, scale=scale, implementation=implementation)
        if nb >= 2:
            y = jnp.swapaxes(y, 1, 2).reshape(*full_batch, y.shape[1], y.shape[3])
        else:
            y = y[:, :, 0, :] if nb == 1 else y[0, :, 0, :]
        if m.out_perm != tuple(range(y.ndim)):
            y = jnp.transpose(y, m.out_perm)
        return [y.astype(m.out.aval.dtype)]

    return Span(m.equations, inputs, (m.out,), fn)


def spans(jaxpr, *, implementation=None, record=None) -> tuple[Span, ...]:
    """The :class:`~hamjax.jaxpr.Span` rewrite of :func:`fuse_attention`: one span per attention of ``jaxpr``.

    Args:
      jaxpr: a ``jax.extend.core.Jaxpr``.
      implementation: as :func:`fused_attention`.
      record: a list that each span appends its :class:`FoundAttention` to when it runs.

    Returns:
      A tuple of spans, for :func:`hamjax.jaxpr.intercept`'s ``rewrite``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.graph import attention
      >>> f = lambda q, k, v: jax.nn.softmax(q @ k.T / 2.0) @ v
      >>> [len(s.equations) for s in attention.spans(jax.make_jaxpr(f)(*[jnp.ones((3, 4))] * 3).jaxpr)]
      [12]
    """
    return tuple(_span(m, implementation, record) for m in matches(jaxpr))


@dataclasses.dataclass(frozen=True)
class FoundAttention:
    """An attention :func:`fuse_attention` fuses, as the fused op sees it.

    Attributes:
      shape: the query's ``(B, T, N, H)``.
      keys: ``S``, the number of key positions.
      bias: whether an additive bias is fused.
      mask: whether a boolean mask is fused.
      scale: the static part of the logits' scale.
    """

    shape: tuple[int, ...]
    keys: int
    bias: bool
    mask: bool
    scale: float


def fuse_attention(apply_fn, params, *, implementation=None):
    """Rewrite every explicit attention of a model to one fused ``jax.nn.dot_product_attention``.

    ``softmax(q k^T * scale + bias, where=mask) v`` found in the jaxpr (see
    the module docstring for the forms) becomes :func:`fused_attention`, which
    XLA compiles as ``jax.nn.dot_product_attention`` (``implementation``:
    ``None`` lets JAX choose, ``"xla"``, or ``"cudnn"`` on an NVIDIA GPU) and
    the ONNX exporter as one ``Attention`` operator. The result equals the
    original within float tolerance; params are returned unchanged. The
    jaxpr is traced at each call, so call the result under ``jax.jit``.

    Args:
      apply_fn: any apply function of the contract (NNX, Linen, plain jnp).
      params: its params.
      implementation: ``None``, ``"xla"`` or ``"cudnn"``.

    Returns:
      ``(fused apply_fn, params)``.

    Raises:
      ValueError: an ``implementation`` not in :data:`IMPLEMENTATIONS`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import graph
      >>> def f(p, x):
      ...     q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
      ...     return jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 2.0) @ v
      >>> params = {n: jnp.eye(4) for n in "qkv"}
      >>> fused, params = graph.fuse_attention(f, params)
      >>> x = jnp.arange(24.0).reshape(2, 3, 4) / 24
      >>> bool(jnp.allclose(jax.jit(fused)(params, x), f(params, x), atol=1e-6))
      True
      >>> "hamjax_attention" in str(jax.make_jaxpr(fused)(params, x))
      True
    """
    check_choice("fuse_attention", "implementation", implementation, IMPLEMENTATIONS)
    return intercept(apply_fn, rewrite=functools.partial(spans, implementation=implementation)), params


def find_attention(apply_fn, params, x, **kw) -> tuple[FoundAttention, ...]:
    """The attentions :func:`fuse_attention` would fuse on inputs shaped like ``x``, in evaluation order.

    Nothing runs: the model is traced with ``jax.eval_shape``.

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      x: an example input.
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      A tuple of :class:`FoundAttention` (empty when the model has no attention to fuse).

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import graph, models, functional
      >>> apply_fn, params = functional(models.build("vit", input_shape=(28, 28, 1)))
      >>> [(a.shape, a.keys, a.scale) for a in graph.find_attention(apply_fn, params, jnp.ones((1, 28, 28, 1)))]
      [((1, 16, 4, 16), 16, 0.25), ((1, 16, 4, 16), 16, 0.25)]
    """
    found: list[FoundAttention] = []
    rewrite = functools.partial(spans, record=found)
    jax.eval_shape(lambda p, xx: intercept(apply_fn, rewrite=rewrite)(p, xx, **kw), params, x)
    return tuple(found)
