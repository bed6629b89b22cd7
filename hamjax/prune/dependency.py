"""Channel groups of any model, found in its jaxpr: the parameter slices that must be removed together.

:func:`channel_groups` traces ``apply_fn`` in eval mode (NNX through
:func:`hamjax.functional`, Linen through :func:`hamjax.linen_functional`, or
plain ``jax.numpy``) and follows every channel from the op that creates it
to every parameter slice it touches. It walks the jaxpr symbolically (no
values are computed), inlining calls with :func:`hamjax.jaxpr.call_body`.

Covered today:

* output channels of a ``dot_general`` or ``conv_general_dilated`` with a
  params weight, with the bias added to them, and the matching input rows or
  channels of every consumer;
* elementwise ops (activations, casts, the affine of an inference batch
  norm: its scale, bias and ``batch_stats`` mean and variance join the group;
  ``log``, ``rsqrt``, ``pow`` and division by a channel are not followed:
  zeroed channels would not stay finite);
* residual additions, which couple the channels of both operands;
* reshapes that merge axes (conv -> flatten -> dense: channel ``c`` owns
  every input row ``i`` with ``(i // block) % size == c``), transposes,
  broadcasts, and reductions or pooling windows over other (spatial) axes.

Anything else that touches a channel axis (concatenate, split, gather, a
reduction over the channel axis such as layer norm's mean, a product of two
activations, a depthwise or grouped convolution, several output axes as in
attention heads) makes the channels it touches unprunable: the group is
returned with ``prunable=False`` and a reason naming the primitive. The
model's output channels are never prunable. Not yet covered: offsets through
concatenation, heads, depthwise convolutions, train mode, and physical
shrink of arbitrary models. :mod:`~hamjax.prune.group_masks` masks groups.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.extend.core as jcore

from hamjax._base import call_model
from hamjax.jaxpr import MARKER_PRIMITIVE, call_body

_BCAST = "bcast"  # a data axis the value is constant along
_UNARY_OR_BINARY = {
    "add", "sub", "mul", "div", "max", "min", "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic",
    "sqrt", "rsqrt", "cbrt", "abs", "sign", "integer_pow", "pow", "square", "erf", "erfc", "erf_inv", "sin", "cos",
    "select_n", "clamp", "convert_element_type", "copy", "copy_p", "reduce_precision", "ge", "gt", "le", "lt", "eq",
    "ne", "and", "or", "not", "stop_gradient", "optimization_barrier", "is_finite", "floor", "ceil", "round",
}  # fmt: skip
_UNARY_OR_BINARY.add(MARKER_PRIMITIVE)  # checkpoint_name: an identity
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
_RESHAPES = {"reshape", "squeeze", "expand_dims"}


class ChannelGroup(NamedTuple):
    """Parameter slices that stand for the same channels and must be removed together.

    Attributes:
      size: the number of channels.
      members: ``(leaf key path, axis, block)`` for every param slice: index
        ``i`` along ``axis`` belongs to channel ``(i // block) % size``
        (``block`` is 1 except after a flatten with channels first).
      prunable: whether removing channels of the group is understood.
      reason: why not, naming the primitives; ``""`` when prunable.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
      >>> g = prune.channel_groups(lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"], params, jnp.ones((1, 3)))[0]
      >>> g.size, g.members, g.prunable
      (4, (("['a']", 1, 1), ("['b']", 0, 1)), True)
    """

    size: int
    members: tuple[tuple[str, int, int], ...]
    prunable: bool
    reason: str


class _P(NamedTuple):  # a value computed from params only: (leaf, out axis -> leaf axis or None) per source
    srcs: tuple
    opaque: bool = False


class _D(NamedTuple):  # a value that depends on the input: per axis None, _BCAST or (node, block)
    axes: tuple


class _Pend(NamedTuple):  # a data axis along which params vary, before it meets a channel: {(leaf, axis)}
    pairs: frozenset


def _is_node(e) -> bool:
    return isinstance(e, tuple) and not isinstance(e, _Pend)


class _Graph:
    def __init__(self, paths):
        self.paths, self.parent, self.size = paths, [], []
        self.members: dict[int, set] = {}
        self.reasons: dict[int, list] = {}
        self.odd_leaves: dict[int, str] = {}

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, n: int) -> int:
        while self.parent[n] != n:
            self.parent[n] = n = self.parent[self.parent[n]]
        return n

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)
        return min(a, b)

    def bad(self, n: int, why: str) -> None:
        self.reasons.setdefault(n, []).append(why)

    def member(self, n: int, leaf: int, axis: int, block: int) -> None:
        self.members.setdefault(n, set()).add((leaf, axis, block))

    def touch(self, src: _P, n: int, axis: int, block: int, why: str) -> None:
        if src.opaque:
            self.bad(n, why)
        for leaf, amap in src.srcs:
            if amap is None:
                self.bad(n, why)
            elif amap[axis] is not None:
                self.member(n, leaf, amap[axis], block)

    def groups(self) -> tuple[ChannelGroup, ...]:
        roots = sorted({self.find(n) for n in range(len(self.parent))})
        members = {r: set() for r in roots}
        reasons = {r: [] for r in roots}
        for n, ms in self.members.items():
            members[self.find(n)] |= ms
        for n, rs in self.reasons.items():
            reasons[self.find(n)] += rs
        owners: dict[tuple, set] = {}
        for r in roots:
            for leaf, axis, _ in members[r]:
                owners.setdefault((leaf, axis), set()).add(r)
                if leaf in self.odd_leaves:
                    reasons[r].append(f"{self.paths[leaf]} is also used by {self.odd_leaves[leaf]}")
        for (leaf, axis), rs in owners.items():
            if len(rs) > 1:
                for r in rs:
                    reasons[r].append(f"axis {axis} of {self.paths[leaf]} belongs to several groups")
        return tuple(
            ChannelGroup(
                self.size[r],
                tuple(sorted((self.paths[leaf], axis, block) for leaf, axis, block in members[r])),
                not reasons[r],
                "; ".join(dict.fromkeys(reasons[r])),
            )
            for r in roots
        )


def _shape(v) -> tuple[int, ...]:
    return tuple(v.aval.shape)


def _reshape_groups(src: tuple, dst: tuple):
    """Consecutive axes of ``src`` and ``dst`` with equal products, size-1 axes left out; ``None`` if none."""
    s = [i for i, d in enumerate(src) if d != 1]
    t = [i for i, d in enumerate(dst) if d != 1]
    out, i, j = [], 0, 0
    while i < len(s) and j < len(t):
        gi, gj, pi, pj = [s[i]], [t[j]], src[s[i]], dst[t[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(s[i])
                pi, i = pi * src[s[i]], i + 1
            else:
                gj.append(t[j])
                pj, j = pj * dst[t[j]], j + 1
        out.append((gi, gj))
    return out if i == len(s) and j == len(t) else None


def _elementwise(g: _Graph, name, ins, shape):
    data = [t for t in ins if isinstance(t, _D) and len(t.axes) == len(shape)]
    params = [t for t in ins if isinstance(t, _P) and len(shape) > 0]
    if not data:
        opaque = any(t.opaque for t in params)
        return _P(tuple(s for t in params for s in t.srcs), opaque)
    axes = []
    for k, dim in enumerate(shape):
        entries = [t.axes[k] for t in data]
        nodes = [e for e in entries if _is_node(e)]
        pend = {pair for e in entries if isinstance(e, _Pend) for pair in e.pairs}
        if not nodes:
            known = all(not t.opaque and all(a is not None for _, a in t.srcs) for t in params)
            pend |= {(leaf, a[k]) for t in params for leaf, a in t.srcs if known and a[k] is not None}
            if dim > 1 and not known:
                axes.append(None)
            elif pend and dim > 1:
                axes.append(_Pend(frozenset(pend)))
            else:
                axes.append(_BCAST if all(e in (_BCAST, None) and (e == _BCAST or dim == 1) for e in entries) else None)
            continue
        node, block = nodes[0]
        for other, oblock in nodes[1:]:
            node = g.union(node, other)
            if oblock != block:
                g.bad(node, f"{name} of channels laid out differently")
        if None in entries and dim > 1:
            g.bad(node, f"{name} with an operand that is not a channel of the same group")
        den = ins[1] if name == "div" else None
        den_varies = isinstance(den, _D) and _is_node(den.axes[k])
        den_varies |= isinstance(den, _P) and any(a is not None and a[k] is not None for _, a in den.srcs)
        if name in ("log", "rsqrt", "pow") or den_varies:
            g.bad(node, f"{name} of a channel (a removed channel's zero would not stay finite)")
        for leaf, axis in pend:
            g.member(node, leaf, axis, block)
        for t in params:
            if len(t.srcs) or t.opaque:
                g.touch(t, node, k, block, f"{name} with a param or constant of unknown layout")
        axes.append((node, block))
    return _D(tuple(axes))


def _dot(g: _Graph, eqn, lhs, rhs):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    out_rank = len(_shape(eqn.outvars[0]))
    if isinstance(lhs, _P) and isinstance(rhs, _P):
        return _P((), True)
    if isinstance(lhs, _D) and isinstance(rhs, _D):
        for t in (lhs, rhs):
            for e in t.axes:
                if _is_node(e):
                    g.bad(e[0], "dot_general of two activations")
        return _D((None,) * out_rank)
    data_left = isinstance(lhs, _D)
    d, w = (lhs, rhs) if data_left else (rhs, lhs)
    dc, wc, db = (lc, rc, lb) if data_left else (rc, lc, rb)
    wshape = _shape(eqn.invars[1 if data_left else 0])
    for a, b in zip(dc, wc, strict=True):
        if _is_node(d.axes[a]):
            g.touch(w, d.axes[a][0], b, d.axes[a][1], "dot_general with a weight of unknown layout")
    for a in db:
        if _is_node(d.axes[a]):
            g.bad(d.axes[a][0], "dot_general batch axis")
    dfree = [d.axes[a] for a in range(len(d.axes)) if a not in dc and a not in db]
    wfree = [b for b in range(len(wshape)) if b not in wc and b not in (rb if data_left else lb)]
    new = []
    for b in wfree:
        n = g.new(wshape[b])
        g.touch(w, n, b, 1, "dot_general with a computed weight")
        if sum(wshape[c] > 1 for c in wfree) > 1:
            g.bad(n, "dot_general with several output axes (heads)")
        new.append((n, 1))
    batch = [None] * len(db)
    return _D(tuple(batch + (dfree + new if data_left else new + dfree)))


def _conv(g: _Graph, eqn, lhs, rhs):
    dn = eqn.params["dimension_numbers"]
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    out = [None] * len(_shape(eqn.outvars[0]))
    if not (isinstance(lhs, _D) and isinstance(rhs, _P)):
        for t in (lhs, rhs):
            for e in getattr(t, "axes", ()):
                if _is_node(e):
                    g.bad(e[0], "conv_general_dilated without a params kernel")
        return _D(tuple(out)) if isinstance(lhs, _D) or isinstance(rhs, _D) else _P((), True)
    grouped = eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1
    why = "conv_general_dilated with feature_group_count or batch_group_count > 1"
    feat = lhs.axes[lspec[1]]
    if _is_node(feat):
        g.touch(rhs, feat[0], rspec[1], feat[1], "conv_general_dilated with a kernel of unknown layout")
        if grouped:
            g.bad(feat[0], why)
    for a in lspec[2:]:
        if _is_node(lhs.axes[a]):
            g.bad(lhs.axes[a][0], "conv_general_dilated over a channel axis")
    out[ospec[0]] = lhs.axes[lspec[0]]
    n = g.new(_shape(eqn.outvars[0])[ospec[1]])
    g.touch(rhs, n, rspec[0], 1, "conv_general_dilated with a computed kernel")
    if grouped:
        g.bad(n, why)
    out[ospec[1]] = (n, 1)
    return _D(tuple(out))


def _reshape(g: _Graph, name, t, src, dst):
    groups = _reshape_groups(src, dst)
    if isinstance(t, _P):
        if groups is None or any(len(a) != 1 or len(b) != 1 for a, b in groups):
            return _P(tuple((leaf, None) for leaf, _ in t.srcs), t.opaque)
        moved = {b[0]: a[0] for a, b in groups}
        return _P(
            tuple(
                (leaf, None if amap is None else tuple(amap[moved[k]] if k in moved else None for k in range(len(dst))))
                for leaf, amap in t.srcs
            ),
            t.opaque,
        )
    out = [None] * len(dst)
    kept = {i for a, _ in groups or () for i in a}
    for i, e in enumerate(t.axes):
        if _is_node(e) and (groups is None or i not in kept):
            g.bad(e[0], name)
    for a, b in groups or ():
        tagged = [i for i in a if _is_node(t.axes[i])]
        if len(a) == 1 and len(b) == 1:
            out[b[0]] = t.axes[a[0]]
        elif len(b) == 1 and len(tagged) == 1:
            node, block = t.axes[tagged[0]]
            out[b[0]] = (node, block * math.prod(src[i] for i in a[a.index(tagged[0]) + 1 :]))
        else:
            for i in tagged:
                g.bad(t.axes[i][0], f"{name} that splits or merges several channel axes")
    return _D(tuple(out))


def _broadcast(eqn, t, src, dst):
    dims = eqn.params["broadcast_dimensions"]
    if isinstance(t, _P):
        srcs = []
        for leaf, amap in t.srcs:
            if amap is not None:
                new = [None] * len(dst)
                for i, o in enumerate(dims):
                    new[o] = amap[i] if src[i] == dst[o] else None
                amap = tuple(new)
            srcs.append((leaf, amap))
        return _P(tuple(srcs), t.opaque and len(src) > 0)
    out = [_BCAST] * len(dst)
    for i, o in enumerate(dims):
        out[o] = t.axes[i] if src[i] == dst[o] else _BCAST
    return _D(tuple(out))


def _other(g: _Graph, eqn, ins):
    name = eqn.primitive.name
    shape = _shape(eqn.invars[0]) if eqn.invars else ()
    t = ins[0] if ins else _P(())
    if name in _REDUCTIONS or name.startswith("reduce_window"):
        if name.startswith("reduce_window"):
            win = zip(*(eqn.params[k] for k in ("window_dimensions", "window_strides", "padding")), strict=True)
            dropped = [k for k, (w, s, pad) in enumerate(win) if (w, s, tuple(pad)) != (1, 1, (0, 0))]
            keep = list(range(len(shape)))
        else:
            dropped = list(eqn.params["axes"])
            keep = [k for k in range(len(shape)) if k not in dropped]
        if isinstance(t, _P):
            for leaf, _ in t.srcs:
                g.odd_leaves.setdefault(leaf, name)
            return [_P((), True)]
        for k in dropped:
            if _is_node(t.axes[k]):
                g.bad(t.axes[k][0], f"{name} over a channel axis")
        return [_D(tuple(None if k in dropped else t.axes[k] for k in keep))]
    if name == "transpose":
        perm = eqn.params["permutation"]
        if isinstance(t, _P):
            return [_P(tuple((leaf, None if a is None else tuple(a[p] for p in perm)) for leaf, a in t.srcs), t.opaque)]
        return [_D(tuple(t.axes[p] for p in perm))]
    data = any(isinstance(i, _D) for i in ins)
    for i in ins:
        if isinstance(i, _D):
            for e in i.axes:
                if _is_node(e):
                    g.bad(e[0], name)
        elif data:
            for leaf, _ in i.srcs:
                g.odd_leaves.setdefault(leaf, name)
    return [_D((None,) * len(_shape(v))) if data else _P((), True) for v in eqn.outvars]


def _walk(g: _Graph, jaxpr, tags):
    env = dict(zip(jaxpr.invars, tags, strict=True))
    for v in jaxpr.constvars:
        env[v] = _P((), len(_shape(v)) > 0)

    def tag_of(v):
        return _P(()) if isinstance(v, jcore.Literal) else env[v]

    for eqn in jaxpr.eqns:
        ins = [tag_of(v) for v in eqn.invars]
        name, sub = eqn.primitive.name, call_body(eqn)
        if sub is not None:
            outs = _walk(g, sub[0], ins)
        elif name == "dot_general":
            outs = [_dot(g, eqn, *ins)]
        elif name == "conv_general_dilated":
            outs = [_conv(g, eqn, *ins)]
        elif name in _UNARY_OR_BINARY and len(eqn.outvars) == 1:
            outs = [_elementwise(g, name, ins, _shape(eqn.outvars[0]))]
        elif name in _RESHAPES or name == "broadcast_in_dim":
            src, dst = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
            if name == "broadcast_in_dim":
                outs = [_broadcast(eqn, ins[0], src, dst)]
            else:
                outs = [_reshape(g, name, ins[0], src, dst)]
        else:
            outs = _other(g, eqn, ins)
        for v, t in zip(eqn.outvars, outs, strict=True):
            env[v] = t
    return [tag_of(v) for v in jaxpr.outvars]


def channel_groups(apply_fn, params, x) -> tuple[ChannelGroup, ...]:
    """The channel groups of ``apply_fn`` (eval mode) on inputs shaped like ``x``, in order of creation.

    Args:
      apply_fn: any apply function of the contract (NNX, Linen or plain jnp).
      params: its params (variables for an :class:`hamjax.ApplyFn`).
      x: an example input (only its shape and dtype matter).

    Returns:
      A tuple of :class:`ChannelGroup`, one per channel axis created by a
      ``dot_general`` or ``conv_general_dilated`` after merging coupled ones.

    Raises:
      ValueError: if ``apply_fn`` has no matrix product or convolution.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "v": jnp.ones((4, 2))}
      >>> f = lambda p, x: jnp.maximum(x @ p["w"] + p["b"][None], 0.0) @ p["v"]
      >>> [(g.size, [m[0] for m in g.members], g.prunable) for g in prune.channel_groups(f, params, jnp.ones((1, 3)))]
      [(4, ["['b']", "['v']", "['w']"], True), (2, ["['v']"], False)]
    """
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    closed = jax.make_jaxpr(lambda flat, xx: call_model(apply_fn, jax.tree.unflatten(tree, flat), xx)[0])(
        [leaf for _, leaf in leaves], x
    )
    g = _Graph(paths)
    tags = [_P(((i, tuple(range(len(_shape(v))))),)) for i, v in enumerate(closed.jaxpr.invars[: len(leaves)])]
    tags += [_D((None,) * len(_shape(v))) for v in closed.jaxpr.invars[len(leaves) :]]
    for t in _walk(g, closed.jaxpr, tags):
        for e in getattr(t, "axes", ()):
            if _is_node(e):
                g.bad(e[0], "model output")
    if not g.parent:
        raise ValueError("channel_groups: apply_fn has no dot_general or conv_general_dilated; no channels to group")
    return g.groups()
