"""Which channels of each group to keep, and the masks that remove the others across every member.

:func:`group_channels` scores the channels of every prunable group
(:func:`~hamjax.prune.group_importance`, summed over all the group's
members) and keeps the most important ones:

* ``scope="layer"``: each group loses ``floor(sparsity * size)`` channels.
* ``scope="global"``: one ranking over all prunable groups removes
  ``floor(sparsity * total)`` channels of the ``total`` prunable ones. Each
  group's importances are first divided by the group's mean importance (as
  DepGraph does), so a wide group of small weights and a narrow group of
  large ones compare by how each channel stands within its group.

Either way every prunable group keeps at least one channel (a group that
would lose all of them is impossible), and the kept count is then rounded
up to a multiple of ``multiple``, or to the group's size where that is
smaller. Rounding only keeps more: the sparsity reached is at most the one
asked. Ties lose the lower channel index first.

``sparsity`` may be traced in both scopes (``jax.vmap`` over a population
of sparsities): every shape depends only on the groups, and the counts are
computed with ``jnp`` operations. ``key`` may be traced too (vmap over
random baselines). :func:`group_masks` turns the kept channels into a mask
tree; :func:`hamjax.prune.shrink_groups` removes them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_choice, check_fraction, check_int
from hamjax.prune.dependency import ChannelGroup, Member, member_channels
from hamjax.prune.group_scores import IMPORTANCE_METHODS, checked_inputs, importance
from hamjax.prune.ranking import SCOPES


def _checked(where, params, groups, sparsity, method, scope, multiple, grads, key):
    check_fraction(where, "sparsity", sparsity)
    check_choice(where, "method", method, IMPORTANCE_METHODS)
    check_choice(where, "scope", scope, SCOPES)
    multiple = check_int(where, "multiple", multiple, minimum=1)
    groups = tuple(groups)
    prunable = [g for g in groups if g.prunable]
    if not prunable:
        reasons = list(dict.fromkeys(g.reason for g in groups))
        listed = "; ".join(reasons[:3]) + (f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else "")
        raise ValueError(f"{where}: no prunable group; reasons: {listed or 'groups is empty'}")
    for i, g in enumerate(groups):
        if g.prunable and multiple > g.size:
            name = g.members[0].path if g.members else f"index {i}"
            raise ValueError(
                f"{where}: multiple={multiple} is larger than the group of {name} ({g.size} channels); "
                "pass a smaller multiple, or leave that group whole with group._replace(prunable=False)"
            )
    leaves, grad_leaves, key = checked_inputs(where, params, prunable, method, grads, key)
    return groups, multiple, leaves, grad_leaves, key


def _kept_counts(scores: list[jax.Array], sparsity, scope: str) -> list[jax.Array]:
    """How many channels each group keeps before rounding: at least one."""
    s = jnp.asarray(sparsity, jnp.float32)
    if scope == "layer":
        return [jnp.maximum(a.shape[0] - jnp.floor(s * a.shape[0]).astype(jnp.int32), 1) for a in scores]
    # Each group's best channel is out of the ranking (+inf), so it is never among the removed.
    normal = [(a / jnp.where(jnp.mean(a) > 0, jnp.mean(a), 1.0)).at[jnp.argmax(a)].set(jnp.inf) for a in scores]
    flat = jnp.concatenate(normal)
    n = flat.shape[0]
    removed = jnp.clip(jnp.floor(s * n).astype(jnp.int32), 0, n - len(scores))
    rank = jnp.zeros(n, jnp.int32).at[jnp.argsort(flat, stable=True)].set(jnp.arange(n, dtype=jnp.int32))
    kept = (rank >= removed).astype(jnp.int32)
    cuts = np.cumsum([a.shape[0] for a in scores])[:-1].tolist()
    return [part.sum() for part in jnp.split(kept, cuts)]


def _keep_best(score: jax.Array, count: jax.Array) -> jax.Array:
    """``True`` at the ``count`` highest scores; ties keep the higher index."""
    n = score.shape[0]
    rank = jnp.zeros(n, jnp.int32).at[jnp.argsort(score, stable=True)].set(jnp.arange(n, dtype=jnp.int32))
    return rank >= n - count


@functools.partial(jax.jit, static_argnames=("groups", "method", "scope", "multiple"))
def _kept(leaves, grad_leaves, sparsity, key, *, groups, method, scope, multiple) -> list[jax.Array]:
    # One compiled call instead of dozens of eager ops (each compiles on first use); nests in a caller's jit or vmap.
    scores = [
        importance(leaves, g, method, grad_leaves, None if key is None else jax.random.fold_in(key, i))
        for i, g in groups
    ]
    counts = _kept_counts(scores, sparsity, scope)
    return [
        _keep_best(score, jnp.minimum(-(-count // multiple) * multiple, g.size))
        for (_, g), score, count in zip(groups, scores, counts, strict=True)
    ]


def _select(where, params, groups, sparsity, method, scope, multiple, grads, key) -> tuple:
    groups, multiple, leaves, grad_leaves, key = _checked(
        where, params, groups, sparsity, method, scope, multiple, grads, key
    )
    # Members as Member tuples, so the groups are hashable static arguments.
    prunable = tuple(
        (i, ChannelGroup(g.size, tuple(Member(*m) for m in g.members), True, ""))
        for i, g in enumerate(groups)
        if g.prunable
    )
    paths = {m.path for _, g in prunable for m in g.members}
    kept = _kept(
        {p: leaves[p] for p in paths},
        None if grad_leaves is None else {p: grad_leaves[p] for p in paths},
        jnp.asarray(sparsity, jnp.float32),
        key,
        groups=prunable,
        method=method,
        scope=scope,
        multiple=multiple,
    )
    keep: list = [None] * len(groups)
    for (i, _), k in zip(prunable, kept, strict=True):
        keep[i] = k
    return tuple(keep)


@functools.partial(jax.jit, static_argnames=("groups", "shapes"))
def _member_masks(keep, *, groups, shapes) -> dict[str, jax.Array]:
    """The mask of every member leaf of ``groups`` (``shapes``: ``(path, shape)`` pairs) from their kept channels."""
    shape_of = dict(shapes)
    masks: dict[str, jax.Array] = {}
    for group, channel in zip(groups, keep, strict=True):
        for m in group.members:
            shape = shape_of[m.path]
            along = (
                jnp.ones((shape[m.axis],), jnp.bool_).at[m.start : m.stop].set(channel[member_channels(m, group.size)])
            )
            mask = jnp.broadcast_to(jnp.expand_dims(along, tuple(k for k in range(len(shape)) if k != m.axis)), shape)
            masks[m.path] = masks[m.path] & mask if m.path in masks else mask
    return masks


def group_channels(
    params,
    groups,
    sparsity,
    *,
    method: str = "l2",
    scope: str = "layer",
    multiple: int = 1,
    grads=None,
    key=None,
) -> tuple[jax.Array | None, ...]:
    """The channels to keep in every group: the most important ones of each prunable group.

    Args:
      params: the params the groups were found in.
      groups: from :func:`~hamjax.prune.channel_groups`; groups with
        ``prunable=False`` are left whole.
      sparsity: the fraction of channels removed, in ``[0, 1)``: of each
        group (``scope="layer"``) or of all prunable channels together
        (``scope="global"``); a float or a (possibly traced) scalar.
      method: the importance (:func:`~hamjax.prune.group_importance`):
        ``"l2"``, ``"l1"``, ``"taylor"`` (needs ``grads``) or ``"random"``
        (needs ``key``).
      scope: ``"layer"`` or ``"global"``: one ranking over all prunable
        groups, each group's importances divided by the group's mean
        importance first (as DepGraph does), every group keeping one.
      multiple: round each kept count up to a multiple of this (8 for
        tensor cores), or to the group's size where that is smaller.
      grads: for ``"taylor"``, a pytree like ``params`` (for example
        ``jax.grad`` of a loss with respect to ``params``).
      key: for ``"random"``, a ``jax.random`` key or an int seed; group
        ``i`` draws with ``jax.random.fold_in(key, i)``.

    Returns:
      A tuple with one entry per group, in the order of ``groups``: a bool
      array of shape ``(group.size,)`` (``True`` keeps the channel) for a
      prunable group, ``None`` for the others. This is the ``keep`` of
      :func:`hamjax.prune.shrink_groups`.

    Raises:
      ValueError: for sparsity outside ``[0, 1)``, an unknown method or
        scope, ``multiple < 1`` or larger than a prunable group (the group
        named by its first member), ``"taylor"`` without matching ``grads``,
        ``"random"`` without ``key``, groups with no prunable group (the
        first reasons listed), or a member leaf missing from ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.array([[3.0, 0.0, 1.0, 2.0]]), "v": jnp.ones((4, 1))}
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> groups = prune.channel_groups(f, params, jnp.ones((1, 1)))
      >>> [k if k is None else k.tolist() for k in prune.group_channels(params, groups, 0.5)]
      [[True, False, False, True], None]
      >>> prune.group_channels(params, groups, 0.9, multiple=2)[0].tolist()
      [True, False, False, True]
    """
    return _select("group_channels", params, groups, sparsity, method, scope, multiple, grads, key)


def group_masks(
    params,
    groups,
    sparsity,
    *,
    method: str = "l2",
    scope: str = "layer",
    multiple: int = 1,
    grads=None,
    key=None,
):
    """Masks that remove the least important channels of every prunable group, across all its members.

    The channels are those :func:`group_channels` drops (same arguments);
    every member slice of a dropped channel is masked: kernel columns, the
    bias entry, norm parameters and statistics, the consumers' input rows.

    Args:
      params: the params the groups were found in.
      groups: from :func:`~hamjax.prune.channel_groups`; groups with
        ``prunable=False`` are left whole.
      sparsity: the fraction of channels removed, in ``[0, 1)`` (may be
        traced): per group, or of all prunable channels for
        ``scope="global"``.
      method: ``"l2"``, ``"l1"``, ``"taylor"`` or ``"random"``
        (:func:`~hamjax.prune.group_importance`).
      scope: ``"layer"`` or ``"global"``.
      multiple: round each kept count up to a multiple of this, or to the
        group's size where that is smaller.
      grads: the gradients for ``"taylor"``, a pytree like ``params``.
      key: the ``jax.random`` key (or int seed) for ``"random"``.

    Returns:
      A mask tree for ``params`` (bool arrays at member leaves of prunable
      groups, ``None`` elsewhere), for :func:`hamjax.prune.apply_masks`.

    Raises:
      ValueError: as :func:`group_channels`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "v": jnp.ones((2, 1))}
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> masks = prune.group_masks(params, prune.channel_groups(f, params, jnp.ones((1, 2))), 0.5)
      >>> masks["w"].tolist(), masks["v"].tolist()
      ([[True, False], [True, False]], [[True], [False]])
    """
    groups = tuple(groups)
    keep = _select("group_masks", params, groups, sparsity, method, scope, multiple, grads, key)
    pairs = [(g, k) for g, k in zip(groups, keep, strict=True) if k is not None]
    shapes = {jax.tree_util.keystr(p): tuple(np.shape(a)) for p, a in jax.tree_util.tree_flatten_with_path(params)[0]}
    used = {m.path for g, _ in pairs for m in g.members}
    masks = _member_masks(
        [k for _, k in pairs],
        groups=tuple(ChannelGroup(g.size, tuple(Member(*m) for m in g.members), True, "") for g, _ in pairs),
        shapes=tuple((p, shapes[p]) for p in sorted(used)),
    )
    return jax.tree_util.tree_map_with_path(lambda p, leaf: masks.get(jax.tree_util.keystr(p)), params)
