"""Importance and masks of whole channel groups (from :func:`hamjax.prune.channel_groups`).

A channel's importance is the sum, over every member slice of its group,
of the slice's norm. :func:`group_masks` removes the least important
channels of each prunable group, the same fraction in every group
(layer-wise): ``floor(sparsity * size)`` channels are removed, at least one
is kept, and the kept count is rounded up to a multiple of ``multiple`` when
that does not exceed the group's size. ``sparsity`` may be traced (vmap over
it): shapes do not depend on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hamjax._checks import check_choice, check_fraction, check_int, is_traced
from hamjax.prune.dependency import ChannelGroup

IMPORTANCE_METHODS = ("l2", "l1")
"""The ``method=`` values of :func:`group_importance` and :func:`group_masks`."""


def _leaves(params) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _per_channel(a: jax.Array, axis: int, block: int, size: int) -> jax.Array:
    """``a`` with ``axis`` split as ``(repeat, size, block)``, channels first: shape ``(size, rest)``."""
    moved = jnp.moveaxis(a, axis, 0)
    split = moved.reshape((-1, size, block, *moved.shape[1:]))
    return jnp.moveaxis(split, 1, 0).reshape(size, -1)


def _importance(leaves, group: ChannelGroup, method: str) -> jax.Array:
    total = jnp.zeros((group.size,), jnp.float32)
    for path, axis, block in group.members:
        w = _per_channel(leaves[path], axis, block, group.size).astype(jnp.float32)
        total = total + (jnp.sqrt(jnp.sum(w * w, axis=1)) if method == "l2" else jnp.sum(jnp.abs(w), axis=1))
    return total


def group_importance(params, group: ChannelGroup, method: str = "l2") -> jax.Array:
    """Per-channel importance of ``group``: the sum over its members of each slice's L2 or L1 norm.

    Args:
      params: the params the group was found in.
      group: a :class:`~hamjax.prune.ChannelGroup`.
      method: ``"l2"`` or ``"l1"``.

    Returns:
      A float32 array of shape ``(group.size,)``.

    Raises:
      ValueError: for an unknown method or a member leaf missing from ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "v": jnp.ones((2, 1))}
      >>> g = prune.channel_groups(lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"], params, jnp.ones((1, 2)))[0]
      >>> prune.group_importance(params, g).tolist()
      [6.0, 2.0]
    """
    check_choice("group_importance", "method", method, IMPORTANCE_METHODS)
    leaves = _leaves(params)
    for path, _, _ in group.members:
        if path not in leaves:
            raise ValueError(f"group_importance: params has no leaf {path}; were the groups found in these params?")
    return _importance(leaves, group, method)


def group_masks(params, groups, sparsity, *, method: str = "l2", multiple: int = 1):
    """Masks that remove the least important channels of every prunable group, across all its members.

    Args:
      params: the params the groups were found in.
      groups: from :func:`~hamjax.prune.channel_groups`; groups with
        ``prunable=False`` are left whole.
      sparsity: the fraction of channels removed in each group, in ``[0, 1)``
        (may be traced).
      method: the importance, ``"l2"`` or ``"l1"`` (:func:`group_importance`).
      multiple: round the kept count up to a multiple of this where the group
        is large enough.

    Returns:
      A mask tree for ``params`` (bool arrays at member leaves of prunable
      groups, ``None`` elsewhere), for :func:`hamjax.prune.apply_masks`.

    Raises:
      ValueError: for sparsity outside ``[0, 1)``, ``multiple < 1``, an unknown
        method, or a member leaf missing from ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "v": jnp.ones((2, 1))}
      >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
      >>> masks = prune.group_masks(params, prune.channel_groups(f, params, jnp.ones((1, 2))), 0.5)
      >>> masks["w"].tolist(), masks["v"].tolist()
      ([[True, False], [True, False]], [[True], [False]])
    """
    if not is_traced(sparsity):
        check_fraction("group_masks", "sparsity", sparsity)
    multiple = check_int("group_masks", "multiple", multiple, minimum=1)
    check_choice("group_masks", "method", method, IMPORTANCE_METHODS)
    leaves = _leaves(params)
    masks: dict[str, jax.Array] = {}
    for group in groups:
        if not group.prunable:
            continue
        for path, _, _ in group.members:
            if path not in leaves:
                raise ValueError(f"group_masks: params has no leaf {path}; were the groups found in these params?")
        n = group.size
        keep = jnp.maximum(n - jnp.floor(sparsity * n).astype(jnp.int32), 1)
        rounded = -(-keep // multiple) * multiple
        keep = jnp.where(rounded <= n, rounded, keep)
        order = jnp.argsort(-_importance(leaves, group, method), stable=True)
        channel = jnp.zeros((n,), jnp.bool_).at[order].set(jnp.arange(n) < keep)
        for path, axis, block in group.members:
            shape = leaves[path].shape
            along = channel[(jnp.arange(shape[axis]) // block) % n]
            m = jnp.broadcast_to(jnp.expand_dims(along, tuple(k for k in range(len(shape)) if k != axis)), shape)
            masks[path] = masks[path] & m if path in masks else m
    return jax.tree_util.tree_map_with_path(lambda p, leaf: masks.get(jax.tree_util.keystr(p)), params)
