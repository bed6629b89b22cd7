"""Channel groups of any model, found in its jaxpr: the parameter slices that must be removed together.

:func:`channel_groups` traces ``apply_fn`` (eval mode unless ``train=True``;
NNX through :func:`hamjax.functional`, Linen through
:func:`hamjax.linen_functional`, or plain ``jax.numpy``) and follows every
channel from the op that creates it to every parameter slice it touches,
symbolically (:mod:`~hamjax.prune.channel_walk`; no values are computed,
calls are inlined). Covered:

* output channels of a ``dot_general`` or ``conv_general_dilated`` with a
  params weight (each output axis of a multi-axis weight, such as
  ``(d_model, heads, head_dim)``, is its own group), with the bias added to
  them, and the matching input rows or channels of every consumer;
* elementwise ops (activations, casts, the affine of an inference batch
  norm: its scale, bias and ``batch_stats`` join the group); ``log``,
  ``rsqrt``, ``pow`` and division by a channel are followed only where the
  operand is known positive (a softmax's sum), since a removed channel's
  zero must stay finite in the masked model;
* residual additions and products, which couple the channels of both
  operands; concatenations, whose consumers' rows belong to each operand's
  group at an offset; slices and splits at channel boundaries;
* reshapes that merge axes (conv -> flatten -> dense: a block of rows per
  channel; heads and head dims merged into a width) or split a channel axis
  (a fused q, k, v projection reshaped to ``(3, heads, head_dim)``: one
  group per new axis, so heads are a group across q, k, v and the output
  projection); attention's products of two activations, whose batch and
  contracted channel axes are coupled;
* depthwise convolutions (a channel passes through with its kernel slice);
  broadcasts, transposes, and reductions or pooling windows over other axes.

Anything else that touches a channel (a gather, a reduction over the channel
axis such as layer norm's mean, a grouped convolution, an unknown primitive)
makes the channels it touches unprunable: the group is returned with
``prunable=False`` and a reason naming the primitive. The model's output
channels are never prunable. :mod:`~hamjax.prune.group_masks` masks groups,
:mod:`~hamjax.prune.shrink_any` removes them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from hamjax._base import call_model
from hamjax.prune.channel_tags import ChannelGraph, DataTag, ParamTag, shape
from hamjax.prune.channel_walk import walk


class Member(NamedTuple):
    """One parameter slice of a group: index ``i`` of ``path``'s ``axis``, for ``start <= i < stop``, is channel
    ``((i - start) // block + offset) % size``.

    ``block`` is 1 except where a flatten or a merge of axes repeats each
    channel (conv -> flatten, heads x head dims); ``start``/``stop`` cover a
    concatenation's segment; ``offset`` a slice that starts inside the group.
    """

    path: str
    axis: int
    block: int
    start: int
    stop: int
    offset: int


class ChannelGroup(NamedTuple):
    """Parameter slices that stand for the same channels and must be removed together.

    Attributes:
      size: the number of channels.
      members: every param slice, as :class:`Member` tuples.
      prunable: whether removing channels of the group is understood.
      reason: why not, naming the primitives; ``""`` when prunable.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
      >>> g = prune.channel_groups(lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"], params, jnp.ones((1, 3)))[0]
      >>> g.size, [(m.path, m.axis) for m in g.members], g.prunable
      (4, [("['a']", 1), ("['b']", 0)], True)
    """

    size: int
    members: tuple[Member, ...]
    prunable: bool
    reason: str


def member_channels(member: Member, size: int) -> np.ndarray:
    """The channel of each index ``start .. stop - 1`` of ``member``'s axis, in a group of ``size`` channels.

    Args:
      member: a :class:`Member`.
      size: the group's size.

    Returns:
      An int array of length ``stop - start``.

    Examples:
      >>> from hamjax import prune
      >>> prune.member_channels(prune.Member("['w']", 0, 2, 1, 7, 1), 3).tolist()
      [1, 1, 2, 2, 0, 0]
    """
    return (np.arange(member.stop - member.start) // member.block + member.offset) % size


def _root_sets(g: ChannelGraph, table: dict) -> dict[int, set | list]:
    out: dict[int, list] = {}
    for n, items in table.items():
        out.setdefault(g.find(n), []).extend(items)
    return out


def _nested(x, y) -> bool:
    """Whether two views of one axis range are separate digits (heads and head dims), not the same one."""
    (bx, sx), (by, _) = sorted([x, y])
    return by % (bx * sx) == 0


def finish(g: ChannelGraph) -> tuple[tuple[ChannelGroup, ...], list[int], dict[int, set]]:
    """The groups of a walked graph, their root nodes, and each derived root's parent roots."""
    seen: dict[tuple, int] = {}
    for child, parent, period, size in g.children:
        key = (g.find(parent), period, size)
        seen[key] = g.union(seen[key], child) if key in seen else child
    members = {r: set(ms) for r, ms in _root_sets(g, g.members).items()}
    reasons = _root_sets(g, g.reasons)
    parent_of: dict[int, set] = {}
    for child, parent, period, _ in g.children:
        c, p = g.find(child), g.find(parent)
        if c == p:
            reasons.setdefault(c, []).append("a reshape that splits channels into axes coupled with each other")
            continue
        parent_of.setdefault(c, set()).add(p)
        for leaf, axis, block, start, stop, offset in members.get(p, ()):
            if offset % period:
                reasons.setdefault(c, []).append("a reshape that splits a sliced channel axis")
            members.setdefault(c, set()).add((leaf, axis, block * period, start, stop, offset // period))
        reasons.setdefault(c, []).extend(reasons.get(p, []))
    parents = set().union(*parent_of.values())
    roots = sorted({g.find(n) for n in range(len(g.parent))})
    owners: dict[tuple, list] = {}
    for r in roots:
        for leaf, axis, block, start, stop, _ in members.get(r, ()):
            if leaf in g.odd_leaves:
                reasons.setdefault(r, []).append(f"{g.paths[leaf]} is also used by {g.odd_leaves[leaf]}")
            if r not in parents:
                owners.setdefault((leaf, axis), []).append((r, block, start, stop))
    for (leaf, axis), owned in owners.items():
        for i, (r, b, s, t) in enumerate(owned):
            for q, b2, s2, t2 in owned[i + 1 :]:
                if not (s < t2 and s2 < t) or (
                    (s, t) == (s2, t2) and r != q and _nested((b, g.size[r]), (b2, g.size[q]))
                ):
                    continue
                for n in (r, q):
                    reasons.setdefault(n, []).append(f"axis {axis} of {g.paths[leaf]} belongs to several groups")
    for r in parents:
        kids = sorted(roots.index(c) for c, ps in parent_of.items() if r in ps)
        reasons.setdefault(r, []).append(f"split by a reshape into other axes: pruned through groups {kids}")
    g.root_members, g.parents = members, parents
    groups = []
    for r in roots:
        ms = (Member(g.paths[leaf], a, b, s, t, o) for leaf, a, b, s, t, o in members.get(r, ()))
        why = list(dict.fromkeys(reasons.get(r, [])))
        groups.append(ChannelGroup(g.size[r], tuple(sorted(ms)), not why, "; ".join(why)))
    return tuple(groups), roots, parent_of


def trace_channels(apply_fn, params, x, *, train: bool = False, rng=None, mutable: bool = False, **kw):
    """Trace ``apply_fn`` and walk it: ``(closed jaxpr, graph, output tree, number of model outputs)``.

    ``mutable`` (protocol models in train mode) adds the updated variables to
    the outputs, after the model's.
    """
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]

    def fn(flat, xx, key):
        y, new = call_model(apply_fn, jax.tree.unflatten(tree, flat), xx, train=train, rng=key, **kw)
        return (y, new) if mutable else y

    flat = [leaf for _, leaf in leaves]
    try:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(flat, x, rng)
    except (TypeError, ValueError) as e:
        raise ValueError(f"channel_groups: apply_fn fails on these params and x (do they belong together?): {e}") from e
    y_shape = out_shape[0] if mutable else out_shape
    g = ChannelGraph(paths, [np.shape(a) for a in flat])
    tags = [ParamTag(((i, tuple(range(len(shape(v))))),)) for i, v in enumerate(closed.jaxpr.invars[: len(flat)])]
    tags += [DataTag((None,) * len(shape(v))) for v in closed.jaxpr.invars[len(flat) :]]
    n_out = len(jax.tree.leaves(y_shape))
    for t in walk(g, closed.jaxpr, tags)[:n_out]:
        for e in getattr(t, "axes", ()):
            g.bad(e, "model output")
    return closed, g, jax.tree.structure(out_shape), n_out


def channel_groups(apply_fn, params, x, *, train: bool = False, rng=None) -> tuple[ChannelGroup, ...]:
    """The channel groups of ``apply_fn`` on inputs shaped like ``x``, in order of creation.

    Args:
      apply_fn: any apply function of the contract (NNX, Linen or plain jnp).
      params: its params (variables for an :class:`hamjax.ApplyFn`).
      x: an example input (only its shape and dtype matter).
      train: trace in train mode (dropout, batch statistics from the batch);
        the default, eval mode, is what pruning decisions use.
      rng: the dropout key for train mode.

    Returns:
      A tuple of :class:`ChannelGroup`, one per channel axis created by a
      ``dot_general``, a ``conv_general_dilated`` or a reshape that splits a
      channel axis, after merging coupled ones.

    Raises:
      ValueError: if ``apply_fn`` fails on ``params`` and ``x``, or has no
        matrix product or convolution.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "v": jnp.ones((4, 2))}
      >>> f = lambda p, x: jnp.maximum(x @ p["w"] + p["b"][None], 0.0) @ p["v"]
      >>> [(g.size, [m.path for m in g.members], g.prunable) for g in prune.channel_groups(f, params, jnp.ones((1, 3)))]
      [(4, ["['b']", "['v']", "['w']"], True), (2, ["['v']"], False)]
    """
    if train and rng is None:
        rng = jax.random.key(0)
    _, g, _, _ = trace_channels(apply_fn, params, x, train=train, rng=rng)
    if not g.parent:
        raise ValueError("channel_groups: apply_fn has no dot_general or conv_general_dilated; no channels to group")
    return finish(g)[0]
