"""Which params leaves a transform touches: filters over key paths, and maps over the selected leaves.

Every family selects leaves the same way: a ``filter(path, leaf) -> bool``
(:func:`default_filter`: weight matrices and conv kernels) and ``None`` at the
leaves it leaves alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Filter = Callable[[tuple, Any], bool]


def is_none(x) -> bool:
    """Whether a tree leaf is ``None`` (an untouched leaf); the ``is_leaf`` of every mask-tree map."""
    return x is None


def key_name(key) -> str:
    """The name in one jax key-path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def default_filter(path, leaf) -> bool:
    """Whether a leaf is a weight matrix or kernel that pruning may touch.

    Selected: floating arrays with ``ndim >= 2`` whose last path key does not
    contain ``"embed"`` (embedding and position tables) and that do not sit
    in a ``"batch_stats"`` collection. Biases, norm scales and other 1-D
    leaves are never selected.

    This is a guess from the params alone, the default of functions that
    see no model (:func:`hamjax.prune.magnitude_masks` and the other mask
    functions, quantizing a params tree): a 2-D table that is added (a
    position table named ``pos``) is taken for a kernel. Where the model
    is known, :func:`hamjax.jaxpr.weight_filter` decides by use instead.

    Args:
      path: a jax key path (``DictKey``, ``GetAttrKey``, ``SequenceKey``...).
      leaf: the leaf at ``path``.

    Returns:
      ``True`` if the leaf is prunable.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import prune
      >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}, "embedding": jnp.ones((9, 4))}
      >>> [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(params)
      ...  if prune.default_filter(p, x)]
      ["['dense']['kernel']"]
    """
    if getattr(leaf, "ndim", 0) < 2 or not jnp.issubdtype(leaf.dtype, jnp.floating):
        return False
    names = [key_name(k) for k in path]
    if "batch_stats" in names:
        return False
    return not (names and "embed" in names[-1].lower())


def resolve_filter(where: str, filter: Filter | None) -> Filter:
    """``filter``, or :func:`default_filter` for ``None``; raises naming the caller ``where`` if it is not callable."""
    if filter is None:
        return default_filter
    if not callable(filter):
        raise ValueError(f"{where}: filter must be a callable filter(path, leaf) -> bool or None, got {filter!r}")
    return filter


def map_selected(where: str, params, filter, fn) -> Any:
    """A tree like ``params`` with ``fn(path, leaf)`` at selected leaves and ``None`` elsewhere."""
    filter = resolve_filter(where, filter)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    flags = [bool(filter(path, leaf)) for path, leaf in leaves]
    if not any(flags):
        paths = [jax.tree_util.keystr(p) for p, _ in leaves]
        raise ValueError(f"{where}: filter selects no leaf of params (leaves: {paths[:8]}); expected at least one")
    out = [fn(path, leaf) if flag else None for (path, leaf), flag in zip(leaves, flags, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def selected(params: Any, filter: Filter | None = None) -> list[str]:
    """The key paths of the leaves that ``filter`` selects for pruning.

    Args:
      params: any pytree of arrays.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      ``jax.tree_util.keystr`` of every selected leaf, in flattening order.

    Raises:
      ValueError: if no leaf is selected.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> prune.selected({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
      ["['w']"]
    """
    tree = map_selected("selected", params, filter, lambda path, leaf: jax.tree_util.keystr(path))
    return [s for s in jax.tree.leaves(tree, is_leaf=is_none) if s is not None]
