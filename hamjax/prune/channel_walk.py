"""The symbolic walk behind :func:`hamjax.prune.channel_groups`: tag every value of a jaxpr, equation by equation.

The rules of elementwise ops, products and convolutions are in
:mod:`~hamjax.prune.channel_tags`; this module adds reshapes, broadcasts,
slices, splits, concatenations, reductions, transposes and the
fallback (any other primitive that touches a channel makes it unprunable,
naming the primitive), and :func:`walk`, which inlines calls and records
every equation's output tags in evaluation order
(:attr:`~hamjax.prune.channel_tags.ChannelGraph.record`) so that the
physical shrink can walk the same jaxpr again and read them.
"""

from __future__ import annotations

import math

import jax.extend.core as jcore

from hamjax.jaxpr import call_body
from hamjax.prune.channel_tags import (
    BCAST,
    ELEMENTWISE,
    Cat,
    Chan,
    ChannelGraph,
    DataTag,
    ParamTag,
    View,
    conv,
    dot,
    elementwise,
    is_channel,
    shape,
)

_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"}
_RESHAPES = {"reshape", "squeeze", "expand_dims"}
_SIGN_KEEPING = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "transpose"}


def reshape_groups(src: tuple, dst: tuple):
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


def _merge(g: ChannelGraph, name, t: DataTag, src, a: list[int]):
    """The entry of the axis that merges ``src`` axes ``a`` (row-major), or ``None`` with the channels marked."""
    views = []
    for pos, i in enumerate(a):
        e = t.axes[i]
        if not is_channel(e):
            continue
        inner = math.prod(src[j] for j in a[pos + 1 :])
        if isinstance(e, Cat) and (inner != 1 or pos > 0):
            g.bad(e, f"{name} that merges a concatenated axis")
            return None
        if isinstance(e, Cat):
            return e
        for v in e.views:
            if src[i] % (v.block * g.size[v.node]) and pos > 0:
                g.bad(e, f"{name} that merges a sliced channel axis")
                return None
        views += [View(v.node, v.block * inner, v.offset) for v in e.views]
    return Chan(tuple(views)) if views else None


def _split(g: ChannelGraph, name, e, dst, b: list[int]) -> list:
    """Entries of the axes ``dst[b]`` that split the channel axis ``e`` (row-major)."""
    if not isinstance(e, Chan):
        g.bad(e, f"{name} that splits a concatenated axis")
        return [None] * len(b)
    out = []
    for pos, j in enumerate(b):
        period, size, views = math.prod(dst[k] for k in b[pos + 1 :]), dst[j], []
        for v in e.views:
            n = g.size[v.node]
            if period % v.block == 0:
                q = period // v.block
                if v.offset % q or n % (q * size):
                    g.bad(e, f"{name} that splits channels unevenly")
                    return [None] * len(b)
                views.append(View(g.derive(v.node, q, size), 1, v.offset // q))
            elif v.block % (period * size):
                g.bad(e, f"{name} that splits channels unevenly")
                return [None] * len(b)
        out.append(Chan(tuple(views)) if views else None)
    return out


def reshape(g: ChannelGraph, name, t, src, dst):
    groups = reshape_groups(src, dst)
    if isinstance(t, ParamTag):
        if groups is None or any(len(a) != 1 or len(b) != 1 for a, b in groups):
            return ParamTag(tuple((leaf, None) for leaf, _ in t.srcs), t.opaque)
        moved = {b[0]: a[0] for a, b in groups}
        srcs = [
            (leaf, None if m is None else tuple(m[moved[k]] if k in moved else None for k in range(len(dst))))
            for leaf, m in t.srcs
        ]
        return ParamTag(tuple(srcs), t.opaque)
    out = [None] * len(dst)
    kept = {i for a, _ in groups or () for i in a}
    for i, e in enumerate(t.axes):
        if groups is None or i not in kept:
            g.bad(e, f"{name} that drops or reorders a channel axis")
    for a, b in groups or ():
        if len(b) == 1:
            out[b[0]] = _merge(g, name, t, src, a) if len(a) > 1 else t.axes[a[0]]
        elif len(a) == 1 and is_channel(t.axes[a[0]]):
            for j, e in zip(b, _split(g, name, t.axes[a[0]], dst, b), strict=True):
                out[j] = e
        else:
            for i in a:
                g.bad(t.axes[i], f"{name} that splits or merges several channel axes")
    return DataTag(tuple(out), t.sign)


def broadcast(eqn, t, src, dst):
    dims = eqn.params["broadcast_dimensions"]
    if isinstance(t, ParamTag):
        srcs = []
        for leaf, amap in t.srcs:
            if amap is not None:
                new = [None] * len(dst)
                for i, o in enumerate(dims):
                    new[o] = amap[i] if src[i] == dst[o] else None
                amap = tuple(new)
            srcs.append((leaf, amap))
        return ParamTag(tuple(srcs), t.opaque and len(src) > 0)
    out = [BCAST] * len(dst)
    for i, o in enumerate(dims):
        out[o] = t.axes[i] if src[i] == dst[o] else BCAST
    return DataTag(tuple(out), t.sign)


def _cut(g: ChannelGraph, name, e, dim: int, start: int, stop: int):
    """The entry of ``e``'s axis cut to ``[start, stop)``."""
    if (start, stop) == (0, dim):
        return e
    if isinstance(e, Chan):
        if all(start % v.block == 0 for v in e.views):
            return Chan(tuple(View(v.node, v.block, v.offset + start // v.block) for v in e.views))
        g.bad(e, f"{name} of a channel axis inside a block")
        return None
    if isinstance(e, Cat):
        inside = [(s, a, b) for s, a, b in e.segments if a < stop and b > start]
        if len(inside) == 1 and inside[0][0] is not None:
            seg, a, b = inside[0]
            if a <= start and stop <= b:
                return _cut(g, name, seg, b - a, start - a, stop - a)
        if all(start <= a and b <= stop for _, a, b in inside):
            return Cat(tuple((s, a - start, b - start) for s, a, b in inside))
        g.bad(e, f"{name} across the segments of a concatenation")
        return None
    return e if e == BCAST else None


def _slices(g: ChannelGraph, eqn, t, bounds: list[list[tuple[int, int]]]):
    """Tags of the slices of ``t`` with per-axis ``(start, stop)`` bounds, one list per output."""
    name, dims = eqn.primitive.name, shape(eqn.invars[0])
    if isinstance(t, ParamTag):
        out = []
        for b in bounds:
            cut = [k for k, (s, e) in enumerate(b) if (s, e) != (0, dims[k])]
            srcs = tuple(
                (leaf, None if m is None else tuple(None if k in cut else a for k, a in enumerate(m)))
                for leaf, m in t.srcs
            )
            out.append(ParamTag(srcs, t.opaque))
        return out
    return [
        DataTag(tuple(_cut(g, name, e, d, s, st) for e, d, (s, st) in zip(t.axes, dims, b, strict=True)), t.sign)
        for b in bounds
    ]


def _slice_bounds(eqn):
    dims = shape(eqn.invars[0])
    name = eqn.primitive.name
    if name == "slice":
        strides = eqn.params["strides"] or (1,) * len(dims)
        if any(s != 1 for s in strides):
            return None
        return [list(zip(eqn.params["start_indices"], eqn.params["limit_indices"], strict=True))]
    axis, out, start = eqn.params["axis"], [], 0
    for size in eqn.params["sizes"]:
        out.append([(start, start + size) if k == axis else (0, d) for k, d in enumerate(dims)])
        start += size
    return out


def _concatenate(g: ChannelGraph, eqn, ins):
    d = eqn.params["dimension"]
    out_shape = shape(eqn.outvars[0])
    sizes = [shape(v)[d] for v in eqn.invars]
    if not any(isinstance(t, DataTag) for t in ins):
        srcs = tuple(
            (leaf, None if m is None else tuple(None if k == d else a for k, a in enumerate(m)))
            for t in ins
            for leaf, m in t.srcs
        )
        return ParamTag(srcs, any(t.opaque for t in ins))
    # Off the concatenated axis, operands must agree as in an elementwise op.
    fake = DataTag(tuple(BCAST if k == d else None for k in range(len(out_shape))))
    ins_off = [
        DataTag(tuple(BCAST if k == d else e for k, e in enumerate(t.axes)), t.sign) if isinstance(t, DataTag) else t
        for t in ins
    ]
    off = elementwise(g, "concatenate", ins_off or [fake], out_shape)
    segs, start = [], 0
    for t, size in zip(ins, sizes, strict=True):
        e = t.axes[d] if isinstance(t, DataTag) else None
        if isinstance(t, ParamTag):
            for leaf, m in t.srcs:
                if m is not None and m[d] is not None:
                    g.odd_leaves.setdefault(leaf, "concatenate along a channel axis")
        if isinstance(e, Cat):
            segs += [(s, a + start, b + start) for s, a, b in e.segments]
        else:
            segs.append((e if is_channel(e) else None, start, start + size))
        start += size
    axes = list(off.axes) if isinstance(off, DataTag) else [None] * len(out_shape)
    axes[d] = Cat(tuple(segs)) if any(s is not None for s, _, _ in segs) else None
    return DataTag(tuple(axes))


def _gather(g: ChannelGraph, eqn, t, idx):
    """A gather at constant indices along some axes, whole along the rest (``x[:, :, 0]`` at a symbolic batch)."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    dims, out_rank = shape(eqn.invars[0]), len(shape(eqn.outvars[0]))
    indexed = set(dn.start_index_map)
    kept = [k for k in range(len(dims)) if k not in dn.collapsed_slice_dims]
    plain = not dn.operand_batching_dims and tuple(dn.offset_dims) == tuple(range(out_rank)) == tuple(range(len(kept)))
    whole = all(sizes[k] == eqn.invars[0].aval.shape[k] for k in range(len(dims)) if k not in indexed)
    if not (plain and whole and isinstance(t, DataTag) and isinstance(idx, ParamTag)):
        return None
    for k in indexed:
        g.bad(t.axes[k], "gather of some indices of a channel axis")
    return DataTag(tuple(None if k in indexed else t.axes[k] for k in kept), t.sign)


def _other(g: ChannelGraph, eqn, ins):
    name = eqn.primitive.name
    dims = shape(eqn.invars[0]) if eqn.invars else ()
    t = ins[0] if ins else ParamTag(())
    if name in _REDUCTIONS or name.startswith("reduce_window"):
        if name.startswith("reduce_window"):
            win = zip(*(eqn.params[k] for k in ("window_dimensions", "window_strides", "padding")), strict=True)
            dropped = [k for k, (w, s, pad) in enumerate(win) if (w, s, tuple(pad)) != (1, 1, (0, 0))]
            keep = list(range(len(dims)))
        else:
            dropped = list(eqn.params["axes"])
            keep = [k for k in range(len(dims)) if k not in dropped]
        if isinstance(t, ParamTag):
            for leaf, _ in t.srcs:
                g.odd_leaves.setdefault(leaf, name)
            return [ParamTag((), True)]
        for k in dropped:
            g.bad(t.axes[k], f"{name} over a channel axis")
        sign = t.sign if name in _SIGN_KEEPING else None
        return [DataTag(tuple(None if k in dropped else t.axes[k] for k in keep), sign)]
    if name == "transpose":
        perm = eqn.params["permutation"]
        if isinstance(t, ParamTag):
            return [
                ParamTag(
                    tuple((leaf, None if a is None else tuple(a[p] for p in perm)) for leaf, a in t.srcs), t.opaque
                )
            ]
        return [DataTag(tuple(t.axes[p] for p in perm), t.sign)]
    if name in ("slice", "split") and len(ins) == 1 and (bounds := _slice_bounds(eqn)) is not None:
        return _slices(g, eqn, t, bounds)
    if name == "concatenate":
        return [_concatenate(g, eqn, ins)]
    if name == "gather" and (out := _gather(g, eqn, *ins)) is not None:
        return [out]
    data = any(isinstance(i, DataTag) for i in ins)
    for i in ins:
        if isinstance(i, DataTag):
            for e in i.axes:
                g.bad(e, name)
        elif data:
            for leaf, _ in i.srcs:
                g.odd_leaves.setdefault(leaf, name)
    return [DataTag((None,) * len(shape(v))) if data else ParamTag((), True) for v in eqn.outvars]


def walk(g: ChannelGraph, jaxpr, tags) -> list:
    """Tag every value of ``jaxpr`` from the tags of its inputs; returns the output tags."""
    env = dict(zip(jaxpr.invars, tags, strict=True))
    for v in jaxpr.constvars:
        env[v] = ParamTag((), len(shape(v)) > 0)

    def tag_of(v):
        return ParamTag(()) if isinstance(v, jcore.Literal) else env[v]

    for eqn in jaxpr.eqns:
        ins = [tag_of(v) for v in eqn.invars]
        name, sub = eqn.primitive.name, call_body(eqn)
        if sub is not None:
            outs = walk(g, sub[0], ins)
        else:
            if name == "dot_general":
                outs = [dot(g, eqn, *ins)]
            elif name == "conv_general_dilated":
                outs = [conv(g, eqn, *ins)]
            elif name in ELEMENTWISE and len(eqn.outvars) == 1:
                outs = [elementwise(g, name, ins, shape(eqn.outvars[0]), eqn)]
            elif name == "broadcast_in_dim":
                outs = [broadcast(eqn, ins[0], shape(eqn.invars[0]), shape(eqn.outvars[0]))]
            elif name in _RESHAPES:
                outs = [reshape(g, name, ins[0], shape(eqn.invars[0]), shape(eqn.outvars[0]))]
            else:
                outs = _other(g, eqn, ins)
            g.record.append(outs)
        for v, t in zip(eqn.outvars, outs, strict=True):
            env[v] = t
    return [tag_of(v) for v in jaxpr.outvars]
