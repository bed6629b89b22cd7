"""Scores to masks: the exact-count ranking that every unstructured mask, transform and schedule shares.

A *score tree* has the structure of ``params`` with a float array at every
leaf that is pruned and ``None`` elsewhere. :func:`rank_masks` turns it into a
mask tree that prunes exactly ``floor(sparsity * n)`` of the lowest scores,
per leaf or over all leaves together; ties are broken by position (lower
index first), so the count is exact even when ``sparsity`` is traced.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._select import Filter, is_none, map_selected

Params = Any
Masks = Any

SCOPES = ("layer", "global")


def keep_top(scores: jax.Array, sparsity, *, min_kept: int = 0) -> jax.Array:
    """Keeps all but the ``floor(sparsity * n)`` lowest of ``n`` scores, and at least ``min_kept`` of them.

    Ties prune the lower index first, so the count is exact even for equal
    scores and a traced ``sparsity``.

    Args:
      scores: a 1-D array of ``n`` scores.
      sparsity: fraction in ``[0, 1]`` (possibly traced).
      min_kept: how many entries are kept whatever the sparsity (structured
        pruning keeps one unit per layer).

    Returns:
      ``(n,)`` bool, ``True`` where the score is kept.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.prune.ranking import keep_top
      >>> keep_top(jnp.array([3.0, 1.0, 2.0]), 0.99, min_kept=1).tolist()
      [True, False, False]
    """
    n = scores.shape[0]
    k = jnp.clip(jnp.floor(jnp.asarray(sparsity, jnp.float32) * n), 0, n - min_kept).astype(jnp.int32)
    order = jnp.argsort(scores, stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank >= k


def rank_masks(scores: Any, sparsity, scope: str) -> Masks:
    """Masks that prune the ``floor(sparsity * n)`` lowest scores of a score tree.

    Args:
      scores: a tree with float arrays at the leaves to prune and ``None``
        elsewhere.
      sparsity: fraction in ``[0, 1]`` (possibly traced; not checked here:
        callers check it with :func:`hamjax._checks.check_fraction`).
      scope: ``"layer"`` ranks each leaf on its own; ``"global"`` ranks all
        leaves together.

    Returns:
      A mask tree: bool arrays of each score's shape, ``None`` where the
      score tree holds ``None``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.prune.ranking import rank_masks
      >>> rank_masks({"w": jnp.array([3.0, 1.0, 2.0, 0.0]), "b": None}, 0.5, "layer")["w"].tolist()
      [True, False, True, False]
    """
    leaves, treedef = jax.tree.flatten(scores, is_leaf=is_none)
    arrays = [a.astype(jnp.float32) for a in leaves if a is not None]
    if scope == "layer":
        masks = [keep_top(a.reshape(-1), sparsity).reshape(a.shape) for a in arrays]
    else:
        keep = keep_top(jnp.concatenate([a.reshape(-1) for a in arrays]), sparsity)
        cuts = np.cumsum([a.size for a in arrays])[:-1].tolist()
        masks = [part.reshape(a.shape) for part, a in zip(jnp.split(keep, cuts), arrays, strict=True)]
    it = iter(masks)
    return jax.tree.unflatten(treedef, [None if a is None else next(it) for a in leaves])


def random_scores(where: str, params: Params, key, filter: Filter | None) -> Any:
    """Uniform ``[0, 1)`` scores at the leaves ``filter`` selects, ``None`` elsewhere.

    Args:
      where: the caller's name, for errors.
      params: any pytree of arrays.
      key: a ``jax.random`` key (or an int seed).
      filter: ``filter(path, leaf) -> bool``; the default filter if ``None``.

    Returns:
      A score tree for :func:`rank_masks`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.prune.ranking import random_scores
      >>> scores = random_scores("demo", {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, 0, None)
      >>> scores["w"].shape, scores["b"]
      ((2, 3), None)
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    leaves, treedef = jax.tree.flatten(map_selected(where, params, filter, lambda p, w: w), is_leaf=is_none)
    sizes = [math.prod(w.shape) for w in leaves if w is not None]
    # One draw for all leaves: a threefry call per shape compiles slowly on CPU.
    parts = iter(jnp.split(jax.random.uniform(key, (sum(sizes),)), np.cumsum(sizes)[:-1].tolist()))
    return jax.tree.unflatten(treedef, [None if w is None else next(parts).reshape(w.shape) for w in leaves])


def keep_all(where: str, params: Params, filter: Filter | None) -> Masks:
    """A mask tree that keeps every weight: all-``True`` at the selected leaves, ``None`` elsewhere.

    Args:
      where: the caller's name, for errors.
      params: any pytree of arrays.
      filter: ``filter(path, leaf) -> bool``; the default filter if ``None``.

    Returns:
      The dense starting masks of a transform or optimizer.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.prune.ranking import keep_all
      >>> keep_all("demo", {"w": jnp.ones((1, 2)), "b": jnp.ones(2)}, None)["w"].tolist()
      [[True, True]]
    """
    return map_selected(where, params, filter, lambda path, w: jnp.ones(w.shape, jnp.bool_))
