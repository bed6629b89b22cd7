"""Unstructured pruning masks: which weights to remove, how to apply masks, and how sparse a tree is.

A *mask tree* has the structure of ``params``; each leaf is a bool array of
the param's shape (``True`` keeps the weight) or ``None`` for a leaf that is
not pruned. Map over it with
``jax.tree.map(f, masks, params, is_leaf=lambda x: x is None)``.

Every mask function selects leaves with a ``filter(path, leaf) -> bool``.
They see params only, so without one they fall back to the name-based
:func:`default_filter` (weight matrices and conv kernels, not tables named
``embed``); where the model is known, pass
``filter=hamjax.jaxpr.weight_filter(apply_fn, params, x)``, which decides
by use (a position table that is added, or any table that is gathered, is
not a weight whatever its name), as the recipe ``prune`` step,
:func:`hamjax.prune.iterative_prune` and the population trainer do. Every
mask function is shape-static: ``sparsity`` may be a traced scalar, so
``jax.vmap`` over a batch of sparsities is one compiled call. The number
of pruned weights is exactly ``floor(sparsity * n)`` per layer (or over all
selected layers with ``scope="global"``); ties are broken by position, lower index first
(:func:`hamjax.prune.ranking.rank_masks`).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp

from hamjax._checks import check_choice, check_fraction
from hamjax._select import Filter, is_none, map_selected
from hamjax.prune.ranking import SCOPES, Masks, Params, random_scores, rank_masks


def magnitude_masks(params: Params, sparsity, *, filter: Filter | None = None, scope: str = "layer") -> Masks:
    """Masks that prune the smallest-magnitude weights.

    For each selected leaf ``w`` with ``n`` entries (``scope="layer"``) the
    ``k = floor(s n)`` entries of smallest ``|w|`` are pruned (hamjax rounds
    the pruned count down: ``n = 10``, ``s = 0.25`` prunes 2 and keeps 8,
    where keeping ``int((1 - s) n) = 7`` would prune 3); with
    ``scope="global"`` one ranking runs over all selected leaves together, so
    layers end up with different sparsities.

    Args:
      params: any pytree of arrays.
      sparsity: fraction ``s`` in ``[0, 1)`` to prune; a Python number or a
        (possibly traced) scalar array. A traced value cannot be checked and
        is clipped to ``[0, 1]``.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.
      scope: ``"layer"`` or ``"global"``.

    Returns:
      A mask tree: bool arrays at selected leaves, ``None`` elsewhere.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> masks = prune.magnitude_masks({"w": jnp.array([[1.0, -4.0], [3.0, 0.5]])}, 0.5)
      >>> masks["w"].tolist()
      [[False, True], [True, False]]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    check_choice("magnitude_masks", "scope", scope, SCOPES)
    s = check_fraction("magnitude_masks", "sparsity", sparsity)
    scores = map_selected("magnitude_masks", params, filter, lambda path, w: jnp.abs(w))
    return rank_masks(scores, s, scope)


def random_masks(params: Params, sparsity, key, *, filter: Filter | None = None) -> Masks:
    """Masks that prune a uniformly random ``floor(s n)`` weights of each selected leaf.

    The pruned count is rounded down, as in :func:`magnitude_masks`: ``n = 10``,
    ``s = 0.25`` prunes 2 weights and keeps 8.

    Args:
      params: any pytree of arrays.
      sparsity: fraction in ``[0, 1)`` (possibly traced).
      key: a ``jax.random`` key (or an int seed).
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      A mask tree.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import prune
      >>> masks = prune.random_masks({"w": jnp.ones((4, 5))}, 0.25, jax.random.key(0))
      >>> int((~masks["w"]).sum())
      5

    References:
      Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022.
    """
    s = check_fraction("random_masks", "sparsity", sparsity)
    return rank_masks(random_scores("random_masks", params, key, filter), s, "layer")


def check_tree(where: str, arg: str, params: Params, tree: Any, *, masks: bool) -> None:
    """Raises unless ``tree`` matches ``params`` leaf by leaf: same structure and shapes.

    Args:
      where: the caller's name, for errors.
      arg: the name of ``tree``'s argument (``"masks"``, ``"grads"``).
      params: any pytree of arrays.
      tree: the tree to check.
      masks: ``True`` for a mask tree (bool arrays or ``None`` at each
        leaf), ``False`` for a tree of arrays like ``params`` (gradients).

    Raises:
      ValueError: naming the first path where they differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.prune.masks import check_tree
      >>> check_tree("demo", "grads", {"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, masks=False)
      >>> check_tree("demo", "grads", {"w": jnp.ones(2)}, {"w": jnp.zeros(3)}, masks=False)
      Traceback (most recent call last):
      ...
      ValueError: demo: grads do not match params at ['w']: expected an array of shape (2,), got float32(3,)
    """
    p_leaves, p_def = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_none)
    t_leaves, t_def = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    if p_def != t_def:
        p_paths = [jax.tree_util.keystr(p) for p, _ in p_leaves]
        t_paths = [jax.tree_util.keystr(p) for p, _ in t_leaves]
        first = next(
            (
                f"{a or '(missing)'} in params vs {b or '(missing)'} in {arg}"
                for a, b in itertools.zip_longest(p_paths, t_paths)
                if a != b
            ),
            f"the container types ({p_def} vs {t_def})",
        )
        raise ValueError(f"{where}: {arg} do not match params: first mismatch at {first}")
    for (path, p), (_, t) in zip(p_leaves, t_leaves, strict=True):
        if t is None and (masks or p is None):
            continue
        want = "a bool array" if masks else "an array"
        ok = t is not None and p is not None and getattr(t, "shape", None) == getattr(p, "shape", ())
        if masks:
            ok = ok and t.dtype == jnp.bool_
        if not ok:
            got = f"{getattr(t, 'dtype', type(t).__name__)}{getattr(t, 'shape', '')}"
            raise ValueError(
                f"{where}: {arg} do not match params at {jax.tree_util.keystr(path)}: "
                f"expected {want} of shape {getattr(p, 'shape', None)}, got {got}"
            )


def saliency_masks(
    params: Params, grads: Params, sparsity, *, filter: Filter | None = None, scope: str = "global"
) -> Masks:
    """SNIP masks: prune the weights of smallest connection sensitivity ``|w * g|``.

    .. math:: S_j = |w_j \\, \\partial L / \\partial w_j|

    The ``floor(s n)`` weights of smallest ``S`` are pruned, the count rounded
    down as in :func:`magnitude_masks` (``n = 10``, ``s = 0.25``: 2 pruned, 8 kept).

    Args:
      params: any pytree of arrays.
      grads: gradients of the loss with the structure of ``params``.
      sparsity: fraction in ``[0, 1)`` (possibly traced).
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.
      scope: ``"global"`` (as SNIP) or ``"layer"``.

    Returns:
      A mask tree.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> w = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> g = {"w": jnp.array([[4.0, 1.0], [1.0, 1.0]])}
      >>> prune.saliency_masks(w, g, 0.5)["w"].tolist()
      [[True, False], [False, True]]

    References:
      Lee et al., "SNIP: Single-shot Network Pruning based on Connection
      Sensitivity", ICLR 2019.
    """
    check_choice("saliency_masks", "scope", scope, SCOPES)
    s = check_fraction("saliency_masks", "sparsity", sparsity)
    check_tree("saliency_masks", "grads", params, grads, masks=False)
    scores = map_selected("saliency_masks", params, filter, lambda path, w: w)
    scores = jax.tree.map(
        lambda w, g: None if w is None else jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32)),
        scores,
        grads,
        is_leaf=is_none,
    )
    return rank_masks(scores, s, scope)


def check_masks(params: Params, masks: Masks) -> None:
    """Raise unless ``masks`` is a mask tree for ``params``.

    Args:
      params: any pytree of arrays.
      masks: a tree of the same structure with bool arrays of each param's
        shape or ``None``.

    Raises:
      ValueError: naming the first path where they differ.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> prune.check_masks({"w": jnp.ones(2), "b": jnp.ones(1)}, {"w": jnp.ones(2, bool), "b": None})
    """
    check_tree("check_masks", "masks", params, masks, masks=True)


def apply_masks(params: Params, masks: Masks) -> Params:
    """Zero the pruned weights: ``w * m`` at masked leaves, other leaves unchanged.

    Args:
      params: any pytree of arrays.
      masks: a mask tree for ``params``.

    Returns:
      params with the same structure and dtypes; pruned entries are exactly 0.

    Raises:
      ValueError: if ``masks`` does not match ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> prune.apply_masks({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([True, False])})["w"].tolist()
      [1.0, 0.0]
    """
    check_masks(params, masks)
    return jax.tree.map(
        lambda m, w: w if m is None else jnp.where(m, w, jnp.zeros((), w.dtype)), masks, params, is_leaf=is_none
    )


def _zero_counts(where: str, params, masks, filter) -> dict[str, tuple[int, int]]:
    if masks is None:
        tree = map_selected(where, params, filter, lambda path, w: w)
    else:
        tree = jax.tree.map(lambda m, w: None if m is None else w, masks, apply_masks(params, masks), is_leaf=is_none)
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]
    counts = {jax.tree_util.keystr(p): (int(jnp.sum(w == 0)), w.size) for p, w in leaves if w is not None}
    if not counts:
        raise ValueError(f"{where}: masks prune no leaf (all None); expected at least one bool array")
    return counts


def sparsity_of(params: Params, masks: Masks = None, *, filter: Filter | None = None) -> float:
    """Fraction of zero weights over the selected (or masked) leaves.

    .. math:: \\frac{\\sum_l \\#\\{w \\in W_l : w = 0\\}}{\\sum_l |W_l|}

    Args:
      params: any pytree of arrays (concrete; this is not jittable).
      masks: if given, count over its non-``None`` leaves, with pruned
        entries counted as zero whether or not they were applied.
      filter: selects leaves when ``masks`` is ``None``.

    Returns:
      The fraction as a Python float.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> prune.sparsity_of({"w": jnp.array([[0.0, 1.0], [0.0, 2.0]]), "b": jnp.zeros(2)})
      0.5
    """
    counts = _zero_counts("sparsity_of", params, masks, filter).values()
    return sum(z for z, _ in counts) / sum(n for _, n in counts)


def layer_sparsities(params: Params, masks: Masks = None, *, filter: Filter | None = None) -> dict[str, float]:
    """Fraction of zero weights in each selected (or masked) leaf.

    Args:
      params: any pytree of arrays (concrete).
      masks: as in :func:`sparsity_of`.
      filter: selects leaves when ``masks`` is ``None``.

    Returns:
      ``{keystr(path): fraction}`` in flattening order.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> prune.layer_sparsities({"w": jnp.array([[0.0, 1.0], [3.0, 2.0]])})
      {"['w']": 0.25}
    """
    return {k: z / n for k, (z, n) in _zero_counts("layer_sparsities", params, masks, filter).items()}
