"""Physical shrink of any model: remove channel groups from the params and compute at the smaller shapes.

:func:`shrink_groups` slices every member of the removed channels out of
the params pytree and returns a new ``(apply_fn, params)``. The new
``apply_fn`` does not call the model's modules (a Linen or NNX module would
refuse params of other shapes): it traces the original ``apply_fn`` at the
original shapes, walks that jaxpr with :mod:`~hamjax.prune.channel_walk` to
know which axis of every value is which channel, and evaluates it equation
by equation on the smaller arrays, rewriting the shape parameters that name
a channel axis (reshape sizes, broadcast shapes, slice bounds, split sizes,
a depthwise convolution's group count) and cutting full-size operands that
are not params (a dropout mask drawn at the traced shape, a captured
constant) to the kept channels. Every output shape is checked against the
expected one, so an op the walk does not understand raises instead of
computing a wrong model.

The trace happens once per input shape and mode (cached), inside whatever
``jax.jit`` calls it; a protocol model (:class:`hamjax.ApplyFn`) stays one,
so train mode, dropout keys and batch-statistics updates work, and the
shrunk model trains with :func:`hamjax.train.fit`, quantizes, distills and
exports like any other. Which channels are removed is decided once, from the
groups found in eval mode; a train-mode trace derives its channels from the
same sliced params.
"""

from __future__ import annotations

import itertools

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from hamjax._base import ApplyFn
from hamjax.jaxpr import bind_equation, call_body
from hamjax.prune.channel_tags import BCAST, ELEMENTWISE, Cat, Chan, DataTag, ParamTag, Pending
from hamjax.prune.dependency import ChannelGroup, finish, member_channels, trace_channels


def _check_keep(groups, keep) -> list:
    if len(keep) != len(groups):
        raise ValueError(
            f"shrink_groups: keep has {len(keep)} entries for {len(groups)} groups; expected one per group"
        )
    out = []
    for i, (g, k) in enumerate(zip(groups, keep, strict=True)):
        if not isinstance(g, ChannelGroup):
            raise ValueError(f"shrink_groups: groups[{i}] is {type(g).__name__}, expected a prune.ChannelGroup")
        if k is None:
            out.append(None)
            continue
        k = np.asarray(k)
        if k.shape != (g.size,) or k.dtype != np.bool_:
            raise ValueError(
                f"shrink_groups: keep[{i}] must be a bool array of shape ({g.size},), got {k.dtype}{k.shape}"
            )
        if not k.any():
            first = g.members[0].path if g.members else f"group {i}"
            raise ValueError(
                f"shrink_groups: keep[{i}] removes every channel of the group of {first}; keep at least one"
            )
        if not k.all() and not g.prunable:
            raise ValueError(f"shrink_groups: group {i} is not prunable ({g.reason}); its keep entry must be None")
        out.append(None if k.all() else k)
    return out


def keep_from_masks(groups, masks) -> list:
    """The kept channels of every prunable group read from a mask tree (from :func:`~hamjax.prune.group_masks`)."""
    leaves = {
        jax.tree_util.keystr(p): m
        for p, m in jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda v: v is None)[0]
    }
    keep = []
    for i, g in enumerate(groups):
        found = None
        for m in g.members if g.prunable else ():
            mask = leaves.get(m.path)
            if mask is None:
                continue
            along = np.moveaxis(np.asarray(mask), m.axis, 0)[m.start : m.stop].reshape(m.stop - m.start, -1).any(axis=1)
            kept = np.zeros(g.size, bool)
            kept[member_channels(m, g.size)[along]] = True
            if found is not None and not np.array_equal(found, kept):
                raise ValueError(f"shrink_groups: the masks of group {i} disagree between its members ({m.path})")
            found = kept
        keep.append(found)
    return keep


def leaf_masks(groups, keep) -> dict[str, dict[int, np.ndarray]]:
    """``{leaf path: {axis: kept indices as a bool array}}`` for every member of a group that loses channels."""
    shapes: dict[str, dict[int, int]] = {}
    for g in groups:
        for m in g.members:
            dims = shapes.setdefault(m.path, {})
            dims[m.axis] = max(dims.get(m.axis, 0), m.stop)
    out: dict[str, dict[int, np.ndarray]] = {}
    for g, k in zip(groups, keep, strict=True):
        if k is None:
            continue
        for m in g.members:
            mask = out.setdefault(m.path, {}).setdefault(m.axis, None)
            if mask is None:
                mask = out[m.path][m.axis] = np.ones(shapes[m.path][m.axis], bool)
            mask[m.start : m.stop] &= k[member_channels(m, g.size)]
    return out


def _slice_params(params, masks):
    def cut(path, a):
        for axis, mask in masks.get(jax.tree_util.keystr(path), {}).items():
            if mask.shape[0] != a.shape[axis]:
                mask = np.concatenate([mask, np.ones(a.shape[axis] - mask.shape[0], bool)])
            a = jnp.take(a, jnp.asarray(np.flatnonzero(mask)), axis=axis)
        return a

    return jax.tree_util.tree_map_with_path(cut, params)


class _Plan:
    """Kept indices of every axis of every value of one trace, from the sliced leaves."""

    def __init__(self, g, masks: dict[str, dict[int, np.ndarray]]):
        self.g = g
        self.leaf = {i: masks.get(p, {}) for i, p in enumerate(g.paths)}
        self.keep: dict[int, np.ndarray] = {}
        for r, members in g.root_members.items():  # a channel stays if any of its indices stays
            kept = np.zeros(g.size[r], bool)
            for leaf, axis, block, start, stop, offset in members:
                mask = self.leaf[leaf].get(axis)
                ch = (np.arange(stop - start) // block + offset) % g.size[r]
                kept[ch if mask is None else ch[mask[start:stop]]] = True
            if not kept.all():
                self.keep[r] = kept
        rebuilt: dict[tuple, np.ndarray] = {}  # the leaf masks again, from the channels: they must agree
        for r, members in g.root_members.items():
            for leaf, axis, block, start, stop, offset in members:
                if r in self.keep and r not in g.parents:
                    m = rebuilt.setdefault((leaf, axis), np.ones(g.shapes[leaf][axis], bool))
                    m[start:stop] &= self.keep[r][(np.arange(stop - start) // block + offset) % g.size[r]]
        for leaf, axes in self.leaf.items():
            for axis, mask in axes.items():
                if not np.array_equal(rebuilt.get((leaf, axis), np.ones_like(mask)), mask):
                    raise ValueError(
                        f"shrink_groups: the channels removed from {g.paths[leaf]} (axis {axis}) are not whole "
                        "channels of this trace's groups (a mode couples channels differently)"
                    )

    def entry(self, e, dim: int) -> np.ndarray | None:
        if isinstance(e, Chan):
            out = None
            for v in e.views:
                k = self.keep.get(self.g.find(v.node))
                if k is not None:
                    m = k[(np.arange(dim) // v.block + v.offset) % len(k)]
                    out = m if out is None else out & m
            return out
        if isinstance(e, Cat):
            parts = [self.entry(s, b - a) if s is not None else None for s, a, b in e.segments]
            if all(p is None for p in parts):
                return None
            return np.concatenate(
                [np.ones(b - a, bool) if p is None else p for p, (_, a, b) in zip(parts, e.segments, strict=True)]
            )
        if isinstance(e, Pending):
            return self._pairs(((leaf, a) for leaf, a in e.pairs), dim)
        return None

    def _pairs(self, pairs, dim) -> np.ndarray | None:
        out = None
        for leaf, axis in pairs:
            m = self.leaf[leaf].get(axis)
            if m is not None and m.shape[0] == dim:
                out = m if out is None else out & m
        return out

    def masks(self, tag, dims: tuple) -> list:
        if isinstance(tag, DataTag):
            return [None if e in (None, BCAST) else self.entry(e, d) for e, d in zip(tag.axes, dims, strict=True)]
        out = []
        for k, d in enumerate(dims):
            pairs = [(leaf, m[k]) for leaf, m in tag.srcs if m is not None and m[k] is not None]
            out.append(self._pairs(pairs, d) if pairs and not tag.opaque else None)
        return out


def shape(v) -> tuple:
    """A jaxpr variable's shape, symbolic dimensions as they are."""
    return tuple(v.aval.shape)


def _cut(x, masks, old_dims):
    """``x`` with every full-size axis that loses indices cut to the kept ones."""
    for k, m in enumerate(masks):
        if m is not None and k < x.ndim and x.shape[k] == old_dims[k] and not m.all():
            x = jnp.take(x, jnp.asarray(np.flatnonzero(m)), axis=k)
    return x


def _evaluate(plan: _Plan, jaxpr, consts, args, tags, records):
    env, env_tags = {}, {}
    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v], env_tags[v] = c, ParamTag((), True)
    for v, a, t in zip(jaxpr.invars, args, tags, strict=True):
        env[v], env_tags[v] = a, t

    def read(v):
        return (v.val, ParamTag(())) if isinstance(v, jcore.Literal) else (env[v], env_tags[v])

    for eqn in jaxpr.eqns:
        invals, intags = zip(*(read(v) for v in eqn.invars), strict=True) if eqn.invars else ((), ())
        sub = call_body(eqn)
        if sub is not None:
            outs, outtags = _evaluate(plan, sub[0], sub[1], list(invals), list(intags), records)
        else:
            outtags = next(records)
            outs = _bind(plan, eqn, list(invals), list(intags), outtags)
        for v, val, t in zip(eqn.outvars, outs, outtags, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v], env_tags[v] = val, t
    results = [read(v) for v in jaxpr.outvars]
    return [r[0] for r in results], [r[1] for r in results]


def _bind(plan: _Plan, eqn, invals: list, intags: list, outtags) -> list:
    name = eqn.primitive.name
    out_masks = [plan.masks(t, shape(v)) for v, t in zip(eqn.outvars, outtags, strict=True)]
    expected = [
        tuple(d if m is None else int(m.sum()) for d, m in zip(shape(v), ms, strict=True))
        for v, ms in zip(eqn.outvars, out_masks, strict=True)
    ]
    params = dict(eqn.params)
    if name in ("reshape",):
        params.update(new_sizes=expected[0], dimensions=None)
    elif name == "broadcast_in_dim":
        dims = params["broadcast_dimensions"]
        invals[0] = _cut(invals[0], [out_masks[0][o] for o in dims], tuple(shape(eqn.outvars[0])[o] for o in dims))
        params["shape"] = expected[0]
    elif name in ("slice", "split"):
        in_masks = plan.masks(intags[0], shape(eqn.invars[0]))
        if name == "slice":
            starts, limits = [], []
            for m, s, t in zip(in_masks, params["start_indices"], params["limit_indices"], strict=True):
                starts.append(s if m is None else int(m[:s].sum()))
                limits.append(t if m is None else int(m[:t].sum()))
            params.update(start_indices=tuple(starts), limit_indices=tuple(limits))
        elif (m := in_masks[params["axis"]]) is not None:
            bounds = np.cumsum([0, *params["sizes"]])
            params["sizes"] = tuple(int(m[a:b].sum()) for a, b in itertools.pairwise(bounds))
    elif name == "gather":
        indexed = set(params["dimension_numbers"].start_index_map)
        sizes = params["slice_sizes"]
        params["slice_sizes"] = tuple(s if k in indexed else invals[0].shape[k] for k, s in enumerate(sizes))
    elif name == "conv_general_dilated" and params["feature_group_count"] > 1:
        params["feature_group_count"] = invals[0].shape[params["dimension_numbers"].lhs_spec[1]]
    elif name in ELEMENTWISE and len(eqn.outvars) == 1:  # cut full-size operands that are not params
        out_dims = shape(eqn.outvars[0])
        invals = [_cut(x, out_masks[0], out_dims) if np.ndim(x) == len(out_dims) else x for x in invals]
    try:
        outs = _rebind(eqn, invals, params)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"shrink_groups: {name} fails at the shrunk shapes ({e}); the model cannot be shrunk here"
        ) from e
    for out, exp in zip(outs, expected, strict=True):
        if tuple(np.shape(out)) != exp:
            raise ValueError(
                f"shrink_groups: {name} gives shape {tuple(np.shape(out))} at the shrunk shapes, expected {exp}"
            )
    return outs


def _rebind(eqn, invals, params) -> list:
    if params == eqn.params:
        return bind_equation(eqn, invals)
    return bind_equation(eqn.replace(params=params), invals)


def _shapes_key(tree):
    return tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in jax.tree.leaves(tree))


def shrink_groups(apply_fn, params, x, groups, keep):
    """Remove channels of any model physically: smaller params and an apply function that computes with them.

    Args:
      apply_fn: any apply function of the contract (NNX, Linen or plain jnp).
      params: its params (variables for an :class:`hamjax.ApplyFn`).
      x: an example input; the model is traced on it once here, to check
        that it shrinks (the result works for any batch size).
      groups: from :func:`~hamjax.prune.channel_groups` on these params.
      keep: one entry per group: a bool array of shape ``(group.size,)``
        (``True`` keeps the channel) or ``None`` (the group stays whole); or a
        mask tree from :func:`~hamjax.prune.group_masks`.

    Returns:
      ``(apply_fn, params)`` of the smaller model; it equals the masked model
      (all members of the removed channels zeroed) within float tolerance.

    Raises:
      ValueError: for a keep entry of the wrong shape, one that removes every
        channel of a group or any channel of an unprunable group, masks that
        disagree within a group, or an op that cannot compute at the smaller
        shapes (named).

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from hamjax import prune
      >>> params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "v": jnp.ones((4, 2))}
      >>> f = lambda p, x: jax.nn.relu(x @ p["w"] + p["b"][None]) @ p["v"]
      >>> groups = prune.channel_groups(f, params, jnp.ones((1, 3)))
      >>> g, small = prune.shrink_groups(f, params, jnp.ones((1, 3)), groups, (np.array([1, 0, 1, 0], bool), None))
      >>> small["w"].shape, small["v"].shape, jax.jit(g)(small, jnp.ones((5, 3))).shape
      ((3, 2), (2, 2), (5, 2))
    """
    if not isinstance(keep, (tuple, list)):
        keep = keep_from_masks(groups, keep)
    keep = _check_keep(groups, keep)
    masks = leaf_masks(groups, keep)
    small = _slice_params(params, masks)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), params)
    cache: dict = {}

    def run(p, xx, *, train=False, rng=None, mutable=False, **kw):
        mutable = bool(mutable)  # the protocol's mutable=True, or a list of collections: updated variables come back
        key = (_shapes_key(xx), bool(train), mutable, _shapes_key(rng), tuple(sorted(kw.items())))
        try:
            hash(key)
        except TypeError:  # keyword values that cannot key a cache: trace on every call
            key = object()
        if key not in cache:
            spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), (xx, rng))
            closed, g, out_tree, _ = trace_channels(
                apply_fn, abstract, spec[0], train=train, rng=spec[1], mutable=mutable, **kw
            )
            finish(g)
            cache[key] = (closed, g, out_tree, _Plan(g, masks))
        closed, g, out_tree, plan = cache[key]
        args = [*jax.tree.leaves(p), *jax.tree.leaves(xx), *jax.tree.leaves(rng)]
        n = len(closed.jaxpr.invars)
        if len(args) != n:
            raise ValueError(f"shrink_groups: the shrunk apply_fn got {len(args)} arrays, expected {n}")
        tags = [ParamTag(((i, tuple(range(np.ndim(a)))),)) for i, a in enumerate(jax.tree.leaves(p))]
        tags += [DataTag((None,) * np.ndim(a)) for a in args[len(tags) :]]
        outs, _ = _evaluate(plan, closed.jaxpr, closed.consts, args, tags, iter(g.record))
        return jax.tree.unflatten(out_tree, outs)

    if isinstance(apply_fn, ApplyFn):

        def fn(variables, xx, *, train, rng, mutable, **kw):
            return run(variables, xx, train=train, rng=rng, mutable=mutable, **kw)

        shrunk = ApplyFn(fn, apply_fn.collections)
    else:

        def shrunk(p, xx, **kw):
            return run(p, xx, **kw)

    jax.eval_shape(lambda p, xx: shrunk(p, xx), small, x)  # fail here, not at the first call
    return shrunk, small
