"""Masked training: an optax adapter that keeps pruned weights at zero, with masks in the optimizer state.

:func:`masked_optimizer` wraps any optax optimizer (the JaxPruner pattern:
pruning in two lines on top of optax). With a schedule it also recomputes the
masks during training, inside the jitted update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hamjax._base import optax_update
from hamjax._checks import check_choice, check_fraction, check_int
from hamjax._select import is_none, resolve_filter
from hamjax.prune.masks import apply_masks, check_masks
from hamjax.prune.ranking import keep_all, rank_masks
from hamjax.prune.schedules import Schedule, constant_schedule

SCHEDULED_METHODS = ("magnitude", "global_magnitude", "movement")
"""The ``method=`` values with which :func:`masked_optimizer` recomputes masks during training."""


class MaskedState(NamedTuple):
    """Optimizer state of :func:`masked_optimizer`.

    Read the masks out of any optax chain with
    ``optax.tree_utils.tree_get(opt_state, "masks")``.

    Attributes:
      inner_state: the wrapped optimizer's state.
      masks: the current mask tree (bool arrays, ``None`` at unpruned leaves).
      count: int32 number of updates done.
      scores: float32 movement scores at masked leaves (``method="movement"``
        with a schedule), else ``None``.
    """

    inner_state: Any
    masks: Any
    count: jax.Array
    scores: Any


def masked_optimizer(
    inner: optax.GradientTransformation,
    masks=None,
    *,
    method: str | None = "magnitude",
    schedule: Schedule | float | None = None,
    update_every: int = 1,
    filter=None,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so that pruned weights stay exactly zero while training.

    Each update masks the gradients, runs ``inner``, and returns updates
    ``u'`` with

    .. math:: w + u' = M' \\odot (w + M \\odot u)

    (exactly zero where pruned), so ``optax.apply_updates`` gives the masked
    new params. With ``schedule``, after every ``update_every``-th update the
    masks ``M'`` are recomputed from the post-update params (or from the
    movement scores ``S -= w g``) at sparsity ``schedule(count)``, inside
    ``lax.cond``, so gradual pruning runs in one jitted step. With a schedule,
    :func:`hamjax.train.fit`'s ``result.params`` is the best validation
    snapshot, which may predate the final sparsity; ``result.state.params``
    is the last one.

    Args:
      inner: the optimizer to wrap.
      masks: a fixed mask tree over the params the optimizer sees (for
        :func:`hamjax.train.fit`, ``trainable(apply_fn, params)``); with a
        schedule, the masks to start from. ``None`` starts dense.
      method: how a schedule recomputes masks, one of
        ``SCHEDULED_METHODS``: ``"magnitude"`` (per layer),
        ``"global_magnitude"`` or ``"movement"``; ``None`` for fixed masks.
      schedule: ``schedule(count) -> sparsity`` (e.g.
        :func:`polynomial_schedule`), a number (constant), or ``None``.
      update_every: steps between mask recomputations (>= 1).
      filter: which leaves a schedule prunes when ``masks`` is ``None``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`MaskedState`; ``update`` requires ``params``.

    Raises:
      ValueError: for an unknown ``method``, neither ``masks`` nor
        ``schedule``, a schedule without a method, or masks that do not
        match the params at ``init``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from hamjax import prune
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 0.5]])}
      >>> opt = prune.masked_optimizer(optax.adam(0.1), prune.magnitude_masks(params, 0.5))
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
      >>> (optax.apply_updates(params, updates)["w"] == 0).tolist()
      [[True, False], [False, True]]
      >>> optax.tree_utils.tree_get(state, "masks")["w"].tolist()
      [[False, True], [True, False]]

    References:
      Zhu & Gupta, arXiv 1710.01878 (gradual magnitude pruning); Sanh et al.,
      "Movement Pruning", NeurIPS 2020; Lee et al., "JaxPruner", arXiv
      2304.14082 (masks in optimizer state).
    """
    where = "masked_optimizer"
    check_choice(where, "method", method, (*SCHEDULED_METHODS, None))
    if masks is None and schedule is None:
        raise ValueError(f"{where}: give masks= (fixed masks) or schedule= (gradual pruning); got neither")
    if schedule is not None and method is None:
        raise ValueError(f"{where}: schedule= needs a method in {SCHEDULED_METHODS}, got method=None")
    if schedule is not None and not callable(schedule):
        schedule = constant_schedule(schedule)
    update_every = check_int(where, "update_every", update_every, minimum=1)
    resolve_filter(where, filter)
    inner = optax.with_extra_args_support(inner)
    movement = schedule is not None and method == "movement"
    scope = "global" if method == "global_magnitude" else "layer"

    def init_fn(params):
        if masks is not None:
            check_masks(params, masks)
            start = jax.tree.map(jnp.copy, masks)  # fit donates its state; the caller's masks must survive
        else:
            start = keep_all(where, params, filter)
        scores = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), start) if movement else None
        return MaskedState(inner.init(params), start, jnp.zeros((), jnp.int32), scores)

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError(f"{where}: update needs params= (to keep pruned weights at zero), got None")
        old = state.masks
        inner_updates, inner_state = optax_update(inner, apply_masks(updates, old), state.inner_state, params, **extra)
        count = state.count + 1
        scores, new = state.scores, old
        if movement:
            scores = jax.tree.map(
                lambda s, w, g: None if s is None else s - w.astype(jnp.float32) * g.astype(jnp.float32),
                scores,
                params,
                updates,
                is_leaf=is_none,
            )
        if schedule is not None:

            def recompute():
                if movement:
                    source = scores
                else:
                    new_params = optax.apply_updates(params, _restrict(old, inner_updates, params))
                    source = jax.tree.map(
                        lambda m, w: None if m is None else jnp.abs(w), old, new_params, is_leaf=is_none
                    )
                return rank_masks(source, check_fraction(where, "schedule(count)", schedule(count)), scope)

            new = jax.lax.cond(count % update_every == 0, recompute, lambda: old)
        both = jax.tree.map(lambda a, b: None if a is None else a & b, old, new, is_leaf=is_none)
        return _restrict(both, inner_updates, params), MaskedState(inner_state, new, count, scores)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _restrict(masks, updates, params):
    """Updates that move pruned weights to exactly zero: ``u`` where kept, ``-w`` where pruned."""
    return jax.tree.map(
        lambda m, u, w: u if m is None else jnp.where(m, u, (-w).astype(u.dtype)),
        masks,
        updates,
        params,
        is_leaf=is_none,
    )
