"""Tags of the channel walk (:mod:`~hamjax.prune.channel_walk`): which axis of every value is which channel.

Every value of the traced jaxpr gets a tag. A value computed from params
only is a :class:`ParamTag` (the params leaves it is a re-layout of, axis by
axis); a value that depends on the input is a :class:`DataTag`, whose axes
are each ``None`` (not a channel: batch, spatial, or several channels
mixed), :data:`BCAST` (constant along the axis), a :class:`Pending` axis
(params vary along it but no channel has met it yet), a :class:`Chan`
(channels of one or more groups) or a :class:`Cat` (a concatenation of
such axes, with offsets).

A :class:`Chan` holds :class:`View` values: index ``i`` along the axis is
channel ``(i // block + offset) % size`` of the view's node. One axis holds
several views when a reshape merged axes (heads and head dims merged back
into a model width). A reshape that splits a channel axis into several axes
(a fused q, k, v projection reshaped to ``(3, heads, head_dim)``) derives a
node per new axis from the old one; the old node is then pruned only through
the derived ones. This module holds the tags, the graph of nodes and the
rules of the elementwise, product and convolution primitives.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.extend.core as jcore

from hamjax.jaxpr import MARKER_PRIMITIVE

BCAST = "bcast"
"""The axis entry of a data value that is constant along the axis."""

ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic",
    "sqrt", "rsqrt", "cbrt", "abs", "sign", "integer_pow", "pow", "square", "erf", "erfc", "erf_inv", "sin", "cos",
    "select_n", "clamp", "convert_element_type", "copy", "copy_p", "reduce_precision", "ge", "gt", "le", "lt", "eq",
    "ne", "and", "or", "not", "stop_gradient", "optimization_barrier", "is_finite", "floor", "ceil", "round",
    MARKER_PRIMITIVE,
}  # fmt: skip
"""Primitives whose output element depends only on the same element of each operand."""

_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
_RESHAPES = {"reshape", "squeeze", "expand_dims"}
_POSITIVE = {"exp", "exp2", "logistic"}  # outputs > 0 for any input
_NONNEG = {"abs", "square"}
_NEEDS_POSITIVE = {"log", "rsqrt", "pow"}


class View(NamedTuple):
    """Index ``i`` of an axis is channel ``(i // block + offset) % size`` of ``node``."""

    node: int
    block: int
    offset: int


class Chan(NamedTuple):
    """A channel axis: one view per group it belongs to (nested digits, such as heads and head dims)."""

    views: tuple[View, ...]


class Cat(NamedTuple):
    """A concatenated axis: ``(entry, start, stop)`` segments, ``entry`` a :class:`Chan` or ``None``."""

    segments: tuple


class Pending(NamedTuple):
    """A data axis along which params ``(leaf, axis)`` vary before any channel meets it."""

    pairs: frozenset


class ParamTag(NamedTuple):
    """A value computed from params only: ``(leaf, axis map or None)`` per source; opaque if layout is lost."""

    srcs: tuple
    opaque: bool = False


class DataTag(NamedTuple):
    """A value that depends on the input: one entry per axis, and its known sign (``"pos"``, ``"nonneg"``)."""

    axes: tuple
    sign: str | None = None


def is_channel(e) -> bool:
    """Whether an axis entry is a :class:`Chan` or a :class:`Cat`."""
    return isinstance(e, (Chan, Cat))


def nodes_of(e) -> list[int]:
    """The nodes an axis entry touches."""
    if isinstance(e, Chan):
        return [v.node for v in e.views]
    if isinstance(e, Cat):
        return [n for s, _, _ in e.segments for n in nodes_of(s)]
    return []


class ChannelGraph:
    """Nodes (channel axes), their unions, members, reasons, derived nodes and the recorded tags."""

    def __init__(self, paths, shapes):
        self.paths, self.shapes = paths, shapes
        self.parent: list[int] = []
        self.size: list[int] = []
        self.members: dict[int, set] = {}
        self.reasons: dict[int, list] = {}
        self.odd_leaves: dict[int, str] = {}
        self.children: list[tuple[int, int, int, int]] = []  # (child, parent, period, size)
        self.record: list = []
        self.root_members: dict[int, set] = {}  # filled by hamjax.prune.dependency.finish
        self.parents: set[int] = set()

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

    def derive(self, node: int, period: int, size: int) -> int:
        """The node whose channel ``d`` is every channel ``c`` of ``node`` with ``(c // period) % size == d``."""
        root = self.find(node)
        for child, parent, p, s in self.children:
            if self.find(parent) == root and (p, s) == (period, size):
                return child
        child = self.new(size)
        self.children.append((child, root, period, size))
        return child

    def bad(self, e, why: str) -> None:
        for n in nodes_of(e) if not isinstance(e, int) else [e]:
            self.reasons.setdefault(n, []).append(why)

    def add(self, e, leaf: int, axis: int, start: int = 0, stop: int | None = None) -> None:
        """Make ``leaf``'s ``axis`` (over ``[start, stop)``) a member of every view of entry ``e``."""
        stop = self.shapes[leaf][axis] if stop is None else stop
        if isinstance(e, Chan):
            for v in e.views:
                self.members.setdefault(v.node, set()).add((leaf, axis, v.block, start, stop, v.offset))
        elif isinstance(e, Cat):
            for seg, s, t in e.segments:
                self.add(seg, leaf, axis, start + s, start + t)

    def touch(self, src: ParamTag, e, axis: int, why: str) -> None:
        if src.opaque:
            self.bad(e, why)
        for leaf, amap in src.srcs:
            if amap is None:
                self.bad(e, why)
            elif amap[axis] is not None:
                self.add(e, leaf, amap[axis])


SYMBOLIC = 2**40
"""The size the walk gives a symbolic dimension (an export's batch): larger than any channel axis."""


def shape(v) -> tuple[int, ...]:
    """The shape of a jaxpr variable or literal, a symbolic dimension as :data:`SYMBOLIC`."""
    return tuple(d if isinstance(d, int) else SYMBOLIC for d in v.aval.shape)


def _join(g: ChannelGraph, a, b, why: str):
    """One entry for two axes that must be the same channels (unioning their nodes), or ``None``."""
    if isinstance(a, Chan) and isinstance(b, Chan):
        va, vb = sorted(a.views, key=lambda v: v.block), sorted(b.views, key=lambda v: v.block)
        if len(va) == len(vb) and all(
            (x.block, x.offset, g.size[x.node]) == (y.block, y.offset, g.size[y.node])
            for x, y in zip(va, vb, strict=True)
        ):
            return Chan(tuple(View(g.union(x.node, y.node), x.block, x.offset) for x, y in zip(va, vb, strict=True)))
    elif isinstance(a, Cat) and isinstance(b, Cat) and [s[1:] for s in a.segments] == [s[1:] for s in b.segments]:
        segs = []
        for (x, s, t), (y, _, _) in zip(a.segments, b.segments, strict=True):
            if (x is None) != (y is None):
                g.bad(x if x is not None else y, f"{why} of a channel with a value that is not one")
            segs.append((_join(g, x, y, why) if x is not None and y is not None else x or y, s, t))
        return Cat(tuple(segs))
    g.bad(a, f"{why} of channels laid out differently")
    g.bad(b, f"{why} of channels laid out differently")
    return a


def _sign(name: str, ins, invars, params) -> str | None:
    signs = []
    for v, t in zip(invars, ins, strict=True):
        if isinstance(v, jcore.Literal):
            val = v.val
            signs.append("pos" if val > 0 else "nonneg" if val == 0 else None)
        else:
            signs.append(t.sign if isinstance(t, DataTag) else None)
    if name in _POSITIVE:
        return "pos"
    if name in _NONNEG or (name == "integer_pow" and params["y"] % 2 == 0):
        return "nonneg"
    if name in ("add", "mul", "div", "max", "convert_element_type", "copy", "stop_gradient", "sqrt", MARKER_PRIMITIVE):
        if all(s in ("pos", "nonneg") for s in signs) and signs:
            if name == "max" or name == "add":
                return "pos" if "pos" in signs else "nonneg"
            return "pos" if all(s == "pos" for s in signs) else "nonneg"
        if name == "max" and ("pos" in signs or "nonneg" in signs):  # at least the larger operand's sign
            return "pos" if "pos" in signs else "nonneg"
    return None


def _unit_axes(t, dims: tuple, out_shape: tuple):
    """``t`` with its size-1 axes that broadcast against a larger output marked as such."""
    if len(dims) != len(out_shape) or all(d == o for d, o in zip(dims, out_shape, strict=True)):
        return t
    unit = [d == 1 and o != 1 for d, o in zip(dims, out_shape, strict=True)]
    if isinstance(t, DataTag):
        return DataTag(tuple(BCAST if u else e for e, u in zip(t.axes, unit, strict=True)), t.sign)
    srcs = [
        (leaf, None if m is None else tuple(None if u else a for a, u in zip(m, unit, strict=True)))
        for leaf, m in t.srcs
    ]
    return ParamTag(tuple(srcs), t.opaque)


def elementwise(g: ChannelGraph, name: str, ins, out_shape: tuple, eqn=None):
    """The tag of an elementwise op's output (``eqn`` gives literal operands' signs and params)."""
    if eqn is not None:  # an operand's size-1 axis broadcasts: it is no channel and no pending param axis
        ins = [_unit_axes(t, shape(v), out_shape) for t, v in zip(ins, eqn.invars, strict=True)]
    data = [t for t in ins if isinstance(t, DataTag) and len(t.axes) == len(out_shape)]
    params = [t for t in ins if isinstance(t, ParamTag) and len(out_shape) > 0]
    if not data:
        return ParamTag(tuple(s for t in params for s in t.srcs), any(t.opaque for t in params))
    axes = []
    for k, dim in enumerate(out_shape):
        entries = [t.axes[k] for t in data]
        chans = [e for e in entries if is_channel(e)]
        pend = {pair for e in entries if isinstance(e, Pending) for pair in e.pairs}
        if not chans:
            known = all(not t.opaque and all(a is not None for _, a in t.srcs) for t in params)
            pend |= {(leaf, a[k]) for t in params for leaf, a in t.srcs if known and a[k] is not None}
            if dim > 1 and (not known or None in entries):  # data that is no channel varies along the axis
                axes.append(None)
            elif pend and dim > 1:
                axes.append(Pending(frozenset(pend)))
            else:
                axes.append(BCAST if all(e == BCAST or (e is None and dim == 1) for e in entries) else None)
            continue
        e = chans[0]
        for other in chans[1:]:
            e = _join(g, e, other, name)
        if None in entries and dim > 1:
            g.bad(e, f"{name} with an operand that is not a channel of the same group")
        operand_signs = [t.sign if isinstance(t, DataTag) else None for t in ins]
        if name in _NEEDS_POSITIVE and operand_signs[0] != "pos":
            g.bad(e, f"{name} of a channel (a removed channel's zero would not stay finite)")
        if name == "div":
            den = ins[1]
            varies = isinstance(den, DataTag) and is_channel(den.axes[k])
            varies |= isinstance(den, ParamTag) and any(a is not None and a[k] is not None for _, a in den.srcs)
            if varies and not (isinstance(den, DataTag) and den.sign == "pos"):
                g.bad(e, "div of a channel (a removed channel's zero would not stay finite)")
        for leaf, axis in pend:
            g.add(e, leaf, axis)
        for t in params:
            if len(t.srcs) or t.opaque:
                g.touch(t, e, k, f"{name} with a param or constant of unknown layout")
        axes.append(e)
    return DataTag(tuple(axes), None if eqn is None else _sign(name, ins, eqn.invars, eqn.params))


def _new_channel(g: ChannelGraph, size: int) -> Chan:
    return Chan((View(g.new(size), 1, 0),))


def dot(g: ChannelGraph, eqn, lhs, rhs):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if isinstance(lhs, ParamTag) and isinstance(rhs, ParamTag):
        return ParamTag((), True)
    if isinstance(lhs, DataTag) and isinstance(rhs, DataTag):  # attention: q.k and p.v
        batch = []
        for a, b in [*zip(lc, rc, strict=True), *zip(lb, rb, strict=True)]:
            ea, eb = lhs.axes[a], rhs.axes[b]
            if is_channel(ea) and is_channel(eb):
                joined = _join(g, ea, eb, "dot_general")
            else:
                joined = ea if is_channel(ea) else eb
                if is_channel(joined) and (ea is None or eb is None):
                    g.bad(joined, "dot_general of a channel with an axis that is not one")
            if a in lb:
                batch.append(joined)
        free_l = [lhs.axes[a] for a in range(len(lhs.axes)) if a not in lc and a not in lb]
        free_r = [rhs.axes[b] for b in range(len(rhs.axes)) if b not in rc and b not in rb]
        return DataTag(tuple(batch + free_l + free_r))
    data_left = isinstance(lhs, DataTag)
    d, w = (lhs, rhs) if data_left else (rhs, lhs)
    dc, wc, db, wb = (lc, rc, lb, rb) if data_left else (rc, lc, rb, lb)
    wshape = shape(eqn.invars[1 if data_left else 0])
    for a, b in zip(dc, wc, strict=True):
        if is_channel(d.axes[a]):
            g.touch(w, d.axes[a], b, "dot_general with a weight of unknown layout")
    for a in db:
        if is_channel(d.axes[a]):
            g.bad(d.axes[a], "dot_general batch axis")
    dfree = [d.axes[a] for a in range(len(d.axes)) if a not in dc and a not in db]
    new = []
    for b in (b for b in range(len(wshape)) if b not in wc and b not in wb):
        e = _new_channel(g, wshape[b])
        g.touch(w, e, b, "dot_general with a computed weight")
        new.append(e)
    batch = [None] * len(db)
    return DataTag(tuple(batch + (dfree + new if data_left else new + dfree)))


def _scaled(e, m: int):
    """The entry of an axis each of whose indices repeats ``m`` times (``j -> e[j // m]``)."""
    if isinstance(e, Chan):
        return Chan(tuple(View(v.node, v.block * m, v.offset) for v in e.views))
    return Cat(tuple((_scaled(s, m) if s is not None else None, a * m, b * m) for s, a, b in e.segments))


def conv(g: ChannelGraph, eqn, lhs, rhs):
    dn = eqn.params["dimension_numbers"]
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    out = [None] * len(shape(eqn.outvars[0]))
    if not (isinstance(lhs, DataTag) and isinstance(rhs, ParamTag)):
        for t in (lhs, rhs):
            for e in getattr(t, "axes", ()):
                g.bad(e, "conv_general_dilated without a params kernel")
        return DataTag(tuple(out)) if isinstance(lhs, DataTag) or isinstance(rhs, DataTag) else ParamTag((), True)
    groups, feat = eqn.params["feature_group_count"], lhs.axes[lspec[1]]
    cin, cout = shape(eqn.invars[0])[lspec[1]], shape(eqn.outvars[0])[ospec[1]]
    for a in lspec[2:]:
        g.bad(lhs.axes[a], "conv_general_dilated over a channel axis")
    out[ospec[0]] = lhs.axes[lspec[0]]
    if groups == cin and groups > 1 and eqn.params["batch_group_count"] == 1 and is_channel(feat):
        e = _scaled(feat, cout // cin)  # depthwise: output channel j reads input channel j // multiplier
        g.touch(rhs, e, rspec[0], "conv_general_dilated with a computed kernel")
    else:
        if is_channel(feat):
            g.touch(rhs, feat, rspec[1], "conv_general_dilated with a kernel of unknown layout")
        e = _new_channel(g, cout)
        g.touch(rhs, e, rspec[0], "conv_general_dilated with a computed kernel")
        if groups != 1 or eqn.params["batch_group_count"] != 1:
            why = "conv_general_dilated grouped (feature_group_count or batch_group_count > 1, not depthwise)"
            g.bad(e, why)
            g.bad(feat, why)
    out[ospec[1]] = e
    return DataTag(tuple(out))
