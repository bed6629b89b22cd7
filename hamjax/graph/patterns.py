"""Where a jaxpr computes attention: ``softmax(q k^T * scale + bias) v``, found equation by equation.

:func:`matches` is the pattern side of :func:`hamjax.graph.fuse_attention`
(see its module, :mod:`hamjax.graph.attention`, for the forms matched);
each :class:`Match` names the operands, the scale factors, biases and mask
and the equations that compute them, so a rewrite can replace exactly
those.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hamjax.jaxpr import call_body

MIN_FILL = -1e4
"""A ``where`` mask's fill must be at most this (its ``exp`` is 0 in float32) to be fused."""

_TRANSPARENT = {"convert_element_type", "name", "copy", "copy_p"}


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
      >>> from hamjax.graph import patterns
      >>> f = lambda q, k, v: jax.nn.softmax(q @ k.T / 2.0) @ v
      >>> [m.factors for m in patterns.matches(jax.make_jaxpr(f)(*[jnp.ones((3, 4))] * 3).jaxpr)]
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
