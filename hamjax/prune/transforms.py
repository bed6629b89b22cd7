"""Pruning transforms: the mask functions as ``Transform(init, apply)`` factories with the masks in their state.

Each factory checks its arguments before anything is traced and returns a
:class:`~hamjax.Transform`; ``sparsity`` may be an array leaf (possibly
traced), so ``jax.vmap`` over a batch of sparsities prunes a population in
one call. :class:`PruneState` and :class:`MovementState` are fixed-structure
pytrees, so the transforms run under ``lax.scan``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hamjax._base import Transform
from hamjax._checks import check_choice, check_fraction, check_int
from hamjax._select import Filter, is_none, map_selected, resolve_filter
from hamjax.prune.masks import apply_masks, check_tree, magnitude_masks, random_masks, saliency_masks
from hamjax.prune.patterns import BLOCK_SCORES, INCOMPATIBLE, block_masks, check_block, check_nm, nm_masks
from hamjax.prune.ranking import SCOPES, Masks, keep_all, rank_masks


class PruneState(NamedTuple):
    """State of the mask transforms.

    Attributes:
      masks: the mask tree of the last ``apply`` (all ``True`` after ``init``).
      count: int32 number of ``apply`` calls.
    """

    masks: Masks
    count: jax.Array


def _recomputing(where: str, masks_fn, filter) -> Transform:
    """A transform whose every ``apply`` recomputes masks from params with ``masks_fn(params)``."""

    def init(params):
        return PruneState(keep_all(where, params, filter), jnp.zeros((), jnp.int32))

    def apply(params, state, **extra):
        del extra
        masks = masks_fn(params)
        return apply_masks(params, masks), PruneState(masks, state.count + 1)

    return Transform(init, apply)


def _grads_of(where: str, grads):
    if grads is None:
        raise ValueError(f"{where}: apply needs grads= (gradients with the structure of params), got None")
    return grads


def _check_args(where: str, sparsity, filter, scope: str | None = None) -> None:
    """Validate a transform factory's arguments before anything is traced."""
    if scope is not None:
        check_choice(where, "scope", scope, SCOPES)
    check_fraction(where, "sparsity", sparsity)
    resolve_filter(where, filter)


def magnitude_prune(sparsity, *, filter: Filter | None = None, scope: str = "layer") -> Transform:
    """Transform that prunes the smallest ``|w|`` on every ``apply`` (see :func:`magnitude_masks`).

    Args:
      sparsity: fraction in ``[0, 1)``; an array leaf (possibly traced) so a
        search can ``vmap`` over it.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.
      scope: ``"layer"`` or ``"global"``.

    Returns:
      A :class:`~hamjax.Transform` with :class:`PruneState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> t = prune.magnitude_prune(0.5)
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 0.5]])}
      >>> out, state = t.apply(params, t.init(params))
      >>> out["w"].tolist()
      [[0.0, -4.0], [3.0, 0.0]]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    _check_args("magnitude_prune", sparsity, filter, scope)
    return _recomputing("magnitude_prune", lambda p: magnitude_masks(p, sparsity, filter=filter, scope=scope), filter)


def global_magnitude_prune(sparsity, *, filter: Filter | None = None) -> Transform:
    """:func:`magnitude_prune` with one ranking over all selected layers (``scope="global"``).

    Args:
      sparsity: fraction in ``[0, 1)`` of all selected weights together.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      A :class:`~hamjax.Transform` with :class:`PruneState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> t = prune.global_magnitude_prune(0.5)
      >>> params = {"a": jnp.full((2, 2), 1.0), "b": jnp.full((2, 2), 2.0)}
      >>> out, _ = t.apply(params, t.init(params))
      >>> float(out["a"].sum()), float(out["b"].sum())
      (0.0, 8.0)

    References:
      Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019.
    """
    return magnitude_prune(sparsity, filter=filter, scope="global")


def random_prune(sparsity, *, seed=0, filter: Filter | None = None) -> Transform:
    """Transform that prunes random weights, fixed at ``init`` (see :func:`random_masks`).

    Args:
      sparsity: fraction in ``[0, 1)`` per layer (possibly traced).
      seed: an int (or traced int) seed of the masks.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      A :class:`~hamjax.Transform` with :class:`PruneState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> t = prune.random_prune(0.5, seed=1)
      >>> params = {"w": jnp.ones((4, 4))}
      >>> out, _ = t.apply(params, t.init(params))
      >>> float(out["w"].sum())
      8.0

    References:
      Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022.
    """
    _check_args("random_prune", sparsity, filter)

    def init(params):
        masks = random_masks(params, sparsity, jax.random.key(seed), filter=filter)
        return PruneState(masks, jnp.zeros((), jnp.int32))

    def apply(params, state, **extra):
        del extra
        return apply_masks(params, state.masks), PruneState(state.masks, state.count + 1)

    return Transform(init, apply)


def saliency_prune(sparsity, *, filter: Filter | None = None, scope: str = "global") -> Transform:
    """Transform that prunes by SNIP saliency ``|w * g|`` from ``apply(..., grads=g)``.

    Args:
      sparsity: fraction in ``[0, 1)`` (possibly traced).
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.
      scope: ``"global"`` or ``"layer"``.

    Returns:
      A :class:`~hamjax.Transform` with :class:`PruneState`; ``apply``
      raises ``ValueError`` without ``grads=``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> t = prune.saliency_prune(0.5)
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> out, _ = t.apply(params, t.init(params), grads={"w": jnp.array([[4.0, 1.0], [1.0, 1.0]])})
      >>> out["w"].tolist()
      [[1.0, 0.0], [0.0, 4.0]]

    References:
      Lee et al., "SNIP: Single-shot Network Pruning based on Connection
      Sensitivity", ICLR 2019.
    """
    _check_args("saliency_prune", sparsity, filter, scope)

    def init(params):
        return PruneState(keep_all("saliency_prune", params, filter), jnp.zeros((), jnp.int32))

    def apply(params, state, *, grads=None, **extra):
        del extra
        masks = saliency_masks(params, _grads_of("saliency_prune", grads), sparsity, filter=filter, scope=scope)
        return apply_masks(params, masks), PruneState(masks, state.count + 1)

    return Transform(init, apply)


class MovementState(NamedTuple):
    """State of :func:`movement_prune`.

    Attributes:
      masks: the mask tree of the last ``apply``.
      scores: float32 movement scores ``S`` at masked leaves, ``None`` elsewhere.
      count: int32 number of ``apply`` calls.
    """

    masks: Masks
    scores: Any
    count: jax.Array


def movement_prune(sparsity, *, filter: Filter | None = None, scope: str = "layer") -> Transform:
    """Transform that keeps the weights moving away from zero (movement pruning).

    Each ``apply(params, state, grads=g)`` accumulates the scores and keeps
    the top ``1 - s`` of them:

    .. math:: S \\leftarrow S - w \\odot g, \\qquad M = \\mathrm{Top}_{1-s}(S)

    A weight that gradient descent pushes away from zero (``w g < 0``) gains
    score. Pruned weights that the caller keeps at zero stop accumulating.

    Args:
      sparsity: fraction in ``[0, 1)`` (possibly traced).
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.
      scope: ``"layer"`` or ``"global"``.

    Returns:
      A :class:`~hamjax.Transform` with :class:`MovementState`; ``apply``
      raises ``ValueError`` without ``grads=``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> t = prune.movement_prune(0.5)
      >>> params = {"w": jnp.array([[1.0, 1.0], [-1.0, -1.0]])}
      >>> grads = {"w": jnp.array([[-1.0, 1.0], [-1.0, 1.0]])}
      >>> out, state = t.apply(params, t.init(params), grads=grads)
      >>> out["w"].tolist()
      [[1.0, 0.0], [0.0, -1.0]]

    References:
      Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity by
      Fine-Tuning", NeurIPS 2020.
    """
    _check_args("movement_prune", sparsity, filter, scope)

    def init(params):
        scores = map_selected("movement_prune", params, filter, lambda path, w: jnp.zeros(w.shape, jnp.float32))
        return MovementState(keep_all("movement_prune", params, filter), scores, jnp.zeros((), jnp.int32))

    def apply(params, state, *, grads=None, **extra):
        del extra
        grads = _grads_of("movement_prune", grads)
        check_tree("movement_prune", "grads", params, grads, masks=False)
        scores = jax.tree.map(
            lambda s, w, g: None if s is None else s - w.astype(jnp.float32) * g.astype(jnp.float32),
            state.scores,
            params,
            grads,
            is_leaf=is_none,
        )
        masks = rank_masks(scores, sparsity, scope)
        return apply_masks(params, masks), MovementState(masks, scores, state.count + 1)

    return Transform(init, apply)


def nm_prune(n: int, m: int, *, axis: int = -2, incompatible: str = "raise", filter: Filter | None = None) -> Transform:
    """Transform that applies N:M sparsity on every ``apply`` (see :func:`nm_masks`).

    Args:
      n: weights kept per group of ``m`` (static).
      m: group size along ``axis`` (static).
      axis: the axis the groups run along, as for :func:`nm_masks` (the input axis by default).
      incompatible: one of ``INCOMPATIBLE``: a layer whose ``axis`` is not a
        multiple of ``m`` raises, or is left dense with a warning naming it.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      A :class:`~hamjax.Transform` with :class:`PruneState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> t = prune.nm_prune(2, 4)
      >>> params = {"w": jnp.arange(1.0, 9.0).reshape(4, 2)}
      >>> out, _ = t.apply(params, t.init(params))
      >>> out["w"].tolist()
      [[0.0, 0.0], [0.0, 0.0], [5.0, 6.0], [7.0, 8.0]]

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv 2104.08378.
    """
    n, m = check_nm("nm_prune", n, m)
    check_int("nm_prune", "axis", axis)
    check_choice("nm_prune", "incompatible", incompatible, INCOMPATIBLE)
    resolve_filter("nm_prune", filter)
    return _recomputing(
        "nm_prune", lambda p: nm_masks(p, n, m, axis=axis, incompatible=incompatible, filter=filter), filter
    )


def block_prune(sparsity, *, block=(4, 4), score: str = "l2", filter: Filter | None = None) -> Transform:
    """Transform that prunes whole tiles of smallest score (see :func:`block_masks`).

    Args:
      sparsity: fraction of tiles in ``[0, 1)`` per layer (possibly traced).
      block: ``(rows, cols)`` of a tile (static); edge tiles of a kernel it does not divide are smaller.
      score: one of ``BLOCK_SCORES``: a tile's L2 norm or its mean magnitude.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      A :class:`~hamjax.Transform` with :class:`PruneState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> t = prune.block_prune(0.5, block=(2, 2))
      >>> params = {"w": jnp.arange(16.0).reshape(4, 4)}
      >>> out, _ = t.apply(params, t.init(params))
      >>> float((out["w"] == 0).mean())
      0.5

    References:
      Gray et al., "GPU Kernels for Block-Sparse Weights", OpenAI 2017.
    """
    check_block("block_prune", block)
    check_choice("block_prune", "score", score, BLOCK_SCORES)
    _check_args("block_prune", sparsity, filter)
    return _recomputing(
        "block_prune", lambda p: block_masks(p, sparsity, block=block, score=score, filter=filter), filter
    )
