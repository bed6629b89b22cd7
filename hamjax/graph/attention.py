"""Attention fusion: explicit ``softmax(q k^T * scale + bias) v`` in any model, rewritten to one fused op.

A model that computes attention with matrix products and a softmax (the
reference ViT and HAMNet, ``flax.linen.MultiHeadDotProductAttention``,
Flax NNX's attention, a hand-written ``jax.numpy`` function) is traced to
its jaxpr and every attention found there is replaced by
:data:`attention_p`, a primitive whose meaning and lowering are
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

Intermediate values used elsewhere (probabilities the model returns) stop
a match. Values the model marked with ``checkpoint_name`` inside a fused
attention (the probabilities the ViT marks for attention transfer) are no
longer computed, so :func:`hamjax.jaxpr.capture` cannot read them from the
fused model. A fully masked row gives uniform weights where the original
``-inf`` fill gives NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

from hamjax._checks import check_choice
from hamjax.jaxpr import Span, call_body, intercept

IMPLEMENTATIONS = (None, "xla", "cudnn")
"""The values of ``implementation=``, as ``jax.nn.dot_product_attention`` takes them."""

MIN_FILL = -1e4
"""A ``where`` mask's fill must be at most this (its ``exp`` is 0 in float32) to be fused."""

_TRANSPARENT = {"convert_element_type", "name", "copy", "copy_p"}


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


@dataclasses.dataclass(frozen=True)
class Match:
    """One attention found in a jaxpr.

    Attributes:
      equations: indices of the equations it replaces.
      q, k, v: the operands' variables; ``*_axes`` are their (batch axes,
        position axis, feature axis), batch axes in the scores' order.
      factors: scalar literals or variables the logits are multiplied by.
      biases: ``(variable, divided_by)`` pairs added to the logits in the
        scores' layout (``divided_by``: literal factors applied after it).
      mask: ``(pred variable, attend_when)`` or ``None``.
      key_last: whether the scores are ``(batch..., T, S)`` (else ``(..., S, T)``).
      out: the second product's output variable; ``out_perm`` maps
        ``(batch..., T, H)`` to its layout.
    """

    equations: tuple[int, ...]
    q: object
    k: object
    v: object
    q_axes: tuple
    k_axes: tuple
    v_axes: tuple
    factors: tuple
    biases: tuple
    mask: tuple | None
    key_last: bool
    out: object
    out_perm: tuple[int, ...]


class _Graph:
    def __init__(self, jaxpr):
        self.jaxpr = jaxpr
        self.producer = {v: i for i, e in enumerate(jaxpr.eqns) for v in e.outvars}
        self.uses = Counter(v for e in jaxpr.eqns for v in e.invars if not isinstance(v, jcore.Literal))
        self.uses.update(v for v in jaxpr.outvars if not isinstance(v, jcore.Literal))

    def eqn(self, v):
        i = None if isinstance(v, jcore.Literal) else self.producer.get(v)
        return (None, None) if i is None else (i, self.jaxpr.eqns[i])

    def through(self, v, taken: list[int]):
        """Walk back over dtype casts and markers used once; the first other value."""
        while True:
            i, e = self.eqn(v)
            if e is None or e.primitive.name not in _TRANSPARENT or self.uses[v] != 1:
                return v
            taken.append(i)
            v = e.invars[0]


def _literal(x) -> float | None:
    if isinstance(x, jcore.Literal) and np.ndim(x.val) == 0:
        return float(x.val)
    return None


def _scalar(g: _Graph, x, taken: list[int]):
    """A scalar operand: a literal, a 0-d variable, or a broadcast of either used once; else None."""
    if isinstance(x, jcore.Literal):
        return x if np.ndim(x.val) == 0 else None
    if x.aval.shape == ():
        return x
    i, e = g.eqn(x)
    if e is not None and e.primitive.name == "broadcast_in_dim" and g.uses[x] == 1:
        inner = e.invars[0]
        if isinstance(inner, jcore.Literal) or inner.aval.shape == ():
            taken.append(i)
            return inner
    return None


def _softmax(g: _Graph, p, taken: list[int]):
    """``(scores variable, axis)`` if ``p`` is a softmax of it over one axis; else None."""
    i, div = g.eqn(p)
    if div is None or div.primitive.name != "div":
        return None
    e_var, den = div.invars
    j, ex = g.eqn(e_var)
    if ex is None or ex.primitive.name != "exp":
        return None
    local = [i, j]
    den = g.through(den, local)
    k, b = g.eqn(den)
    if b is None or b.primitive.name not in ("broadcast_in_dim", "reshape"):
        return None
    m, red = g.eqn(b.invars[0])
    if red is None or red.primitive.name != "reduce_sum" or red.invars[0] is not e_var or len(red.params["axes"]) != 1:
        return None
    axis = int(red.params["axes"][0])
    local += [k, m]
    z = ex.invars[0]
    n, sub = g.eqn(z)
    if sub is not None and sub.primitive.name == "sub" and g.uses[z] == 1:
        s, top = sub.invars
        chain, t = [], top
        while True:  # stop_gradient, broadcast, max(-inf, .), reduce_max
            c, e = g.eqn(t)
            if e is None:
                return None
            chain.append(c)
            if e.primitive.name == "reduce_max":
                if e.invars[0] is not s or tuple(e.params["axes"]) != (axis,):
                    return None
                break
            if e.primitive.name == "max":
                t = next((v for v in e.invars if not isinstance(v, jcore.Literal)), None)
            elif e.primitive.name in ("stop_gradient", "broadcast_in_dim", "reshape"):
                t = e.invars[0]
            else:
                return None
            if t is None:
                return None
        local += [n, *chain]
        internal = 2  # s feeds the reduce_max and the sub
    else:
        s, internal = z, 1
    taken += local
    return s, axis, internal


def _dims(dn, side: int, rank: int):
    (contract, batch) = dn
    c, b = tuple(contract[side]), tuple(batch[side])
    free = tuple(a for a in range(rank) if a not in c and a not in b)
    return c, b, free


def _match_at(g: _Graph, index: int) -> Match | None:
    second = g.jaxpr.eqns[index]
    if second.primitive.name != "dot_general" or any(isinstance(v, jcore.Literal) for v in second.invars):
        return None
    for p_side in (0, 1):
        taken = [index]
        p = g.through(second.invars[p_side], taken)
        found = _softmax(g, p, taken)
        if found is None or g.uses[p] != 1:
            continue
        s, axis, internal = found
        m = _scores(g, s, axis, internal, taken)
        if m is None:
            continue
        first, q_side, factors, biases, mask = m
        out = _assemble(g, second, p_side, first, q_side, axis, factors, biases, mask, taken)
        if out is not None:
            return out
    return None


def _scores(g: _Graph, s, axis, internal, taken):
    """Walk from the softmax input back to the first product: (eqn, query side, factors, biases, mask, s)."""
    factors, biases, mask, later = [], [], None, []
    uses_ok = internal
    v = s
    first_op = True
    while True:
        if g.uses[v] != uses_ok:
            return None
        uses_ok = 1
        i, e = g.eqn(v)
        if e is None:
            return None
        name = e.primitive.name
        if name == "dot_general":
            if any(isinstance(x, jcore.Literal) for x in e.invars):
                return None
            taken.append(i)
            rank = len(e.outvars[0].aval.shape)
            nb = len(e.params["dimension_numbers"][1][0])
            if axis not in (nb, nb + 1) or rank != nb + 2:
                return None
            return e, (0 if axis == nb + 1 else 1), factors, biases, mask
        if name in _TRANSPARENT:
            taken.append(i)
            v = e.invars[0]
            continue
        if (name == "select_n" or call_body(e) is not None) and first_op:
            operands = _select(g, e) if name != "select_n" else e.invars if len(e.invars) == 3 else None
            if operands is None:
                return None
            pred, a, b = operands
            if isinstance(pred, jcore.Literal) or pred.aval.dtype != jnp.bool_:
                return None
            local = []
            fa, fb = _scalar(g, a, local), _scalar(g, b, local)
            fill = fa if fa is not None and _literal(fa) is not None else fb
            if fill is None or _literal(fill) is None or _literal(fill) > MIN_FILL:
                return None
            # select_n(pred, on_false, on_true): the scores sit where the pred says attend
            mask = (pred, fill is fa)
            v = b if fill is fa else a
            taken += [i, *local]
        elif name in ("mul", "div"):
            x, y = e.invars
            local = []
            fy = _scalar(g, y, local)
            fx = _scalar(g, x, local) if name == "mul" and fy is None else None
            if fy is None and fx is None:
                return None
            factor, v = (fy, x) if fy is not None else (fx, y)
            factors.append((factor, name == "div"))
            later.append(len(factors))
            taken += [i, *local]
        elif name in ("add", "sub"):
            x, y = e.invars
            # the scores are the operand that leads back to a product; the other is the bias
            v, other = (x, y) if _leads_to_dot(g, x) else (y, x)
            if name == "sub" and v is not x:
                return None
            biases.append((other, len(factors), name == "sub"))
            taken.append(i)
        else:
            return None
        first_op = False


def _select(g: _Graph, e):
    """``(pred, on_false, on_true)`` in the caller's variables if the call ``e`` is a ``jnp.where``; else None."""
    body, consts = call_body(e)
    if consts or len(body.outvars) != 1 or len(body.eqns) > 4:
        return None
    sel = body.eqns[-1]
    if sel.primitive.name != "select_n" or len(sel.invars) != 3 or sel.outvars[0] is not body.outvars[0]:
        return None
    made = {v: x for x in body.eqns[:-1] for v in x.outvars}
    outer = dict(zip(body.invars, e.invars, strict=True))
    found = []
    for v in sel.invars:
        while v in made and made[v].primitive.name in ("broadcast_in_dim", "convert_element_type"):
            v = made[v].invars[0]
        if isinstance(v, jcore.Literal):
            found.append(v)
        elif v in outer:
            found.append(outer[v])
        else:
            return None
    return tuple(found)


def _leads_to_dot(g: _Graph, v, depth: int = 16) -> bool:
    """Whether ``v`` is a product of two values through the ops a logits chain allows."""
    _, e = g.eqn(v)
    if e is None or depth == 0:
        return False
    if e.primitive.name == "dot_general":
        return not any(isinstance(x, jcore.Literal) for x in e.invars)
    if e.primitive.name not in _TRANSPARENT | {"mul", "div", "add", "sub", "select_n"} and call_body(e) is None:
        return False
    operands = e.invars[1:] if e.primitive.name == "select_n" else e.invars
    if call_body(e) is not None:
        operands = (_select(g, e) or (None,))[1:]
    return any(x is not None and not isinstance(x, jcore.Literal) and _leads_to_dot(g, x, depth - 1) for x in operands)


def _assemble(g, second, p_side, first, q_side, axis, factors, biases, mask, taken) -> Match | None:
    dn1 = first.params["dimension_numbers"]
    ranks = [len(x.aval.shape) for x in first.invars]
    (qc, qb, qf), (kc, kb, kf) = _dims(dn1, q_side, ranks[q_side]), _dims(dn1, 1 - q_side, ranks[1 - q_side])
    if len(qc) != 1 or len(qf) != 1 or len(kf) != 1:
        return None
    nb = len(qb)
    dn2 = second.params["dimension_numbers"]
    v_side = 1 - p_side
    v = second.invars[v_side]
    pc, pb, _ = _dims(dn2, p_side, nb + 2)
    vc, vb, vf = _dims(dn2, v_side, len(v.aval.shape))
    if pc != (axis,) or sorted(pb) != list(range(nb)) or len(vf) != 1 or len(vc) != 1:
        return None
    v_batch = tuple(vb[pb.index(i)] for i in range(nb))
    q, k = first.invars[q_side], first.invars[1 - q_side]
    k_shape = tuple(k.aval.shape[a] for a in (*kb, *kf, *kc))
    v_shape = tuple(v.aval.shape[a] for a in (*v_batch, *vc, *vf))
    if k_shape != v_shape or not (q.aval.dtype == k.aval.dtype == v.aval.dtype):
        return None
    # q pre-scaled by a scalar, used once: absorb it
    i, e = g.eqn(q)
    if e is not None and e.primitive.name in ("mul", "div") and g.uses[q] == 1:
        local = []
        fy = _scalar(g, e.invars[1], local)
        fx = _scalar(g, e.invars[0], local) if e.primitive.name == "mul" and fy is None else None
        if fy is not None or fx is not None:
            factors = [*factors, ((fy if fy is not None else fx), e.primitive.name == "div")]
            q = e.invars[0] if fy is not None else e.invars[1]
            taken += [i, *local]
    out_perm = tuple(pb) + ((nb, nb + 1) if p_side == 0 else (nb + 1, nb))
    return Match(
        equations=tuple(sorted(set(taken))),
        q=q,
        k=k,
        v=v,
        q_axes=(qb, qf[0], qc[0]),
        k_axes=(kb, kf[0], kc[0]),
        v_axes=(v_batch, vc[0], vf[0]),
        factors=tuple(factors),
        biases=tuple(biases),
        mask=mask,
        key_last=q_side == 0,
        out=second.outvars[0],
        out_perm=out_perm,
    )


def _closed(g: _Graph, m: Match) -> bool:
    """No value made inside the match, but its output, is read outside it."""
    inside = Counter(v for i in m.equations for v in g.jaxpr.eqns[i].invars if not isinstance(v, jcore.Literal))
    return (
        all(v is m.out or g.uses[v] == inside[v] for i in m.equations for v in g.jaxpr.eqns[i].outvars)
        and max(m.equations) == g.producer[m.out]
    )


def matches(jaxpr) -> tuple[Match, ...]:
    """The attentions of one jaxpr (not looking into calls), in program order, disjoint.

    Args:
      jaxpr: a ``jax.extend.core.Jaxpr``.

    Returns:
      A tuple of :class:`Match`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.graph import attention
      >>> f = lambda q, k, v: jax.nn.softmax(q @ k.T / 2.0) @ v
      >>> [m.factors for m in attention.matches(jax.make_jaxpr(f)(*[jnp.ones((3, 4))] * 3).jaxpr)]
      [((Literal(2.0), True),)]
    """
    g = _Graph(jaxpr)
    found, used = [], set()
    for i, e in enumerate(jaxpr.eqns):
        if e.primitive.name != "dot_general":
            continue
        m = _match_at(g, i)
        if m is not None and not used & set(m.equations) and _closed(g, m):
            found.append(m)
            used.update(m.equations)
    return tuple(found)


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
            term = -value if negate else value
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


def count(closed) -> int:
    """How many :data:`attention_p` equations ``closed`` (a ``ClosedJaxpr`` or ``Jaxpr``) holds, calls included.

    Args:
      closed: a traced function.

    Returns:
      The number of fused attentions.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.graph import attention
      >>> q = jnp.ones((1, 2, 1, 4))
      >>> attention.count(jax.make_jaxpr(lambda q: attention.fused_attention(q, q, q, scale=0.5))(q))
      1
    """
    jaxpr = getattr(closed, "jaxpr", closed)
    total = 0
    for e in jaxpr.eqns:
        total += e.primitive.name == attention_p.name
        sub = call_body(e)
        total += count(sub[0]) if sub is not None else 0
    return total
