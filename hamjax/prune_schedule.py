"""Pruning over time: mask transforms, sparsity schedules, masked training, prune-finetune cycles.

The transforms wrap the mask functions of :mod:`hamjax.prune` as
``Transform(init, apply)`` with the masks in their state;
:func:`masked_optimizer` keeps pruned weights at zero inside any optax
optimizer; :func:`iterative_prune` runs prune -> finetune cycles. Every name
here is also ``hamjax.prune.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hamjax._base import Transform, trainable, with_trainable
from hamjax._checks import check_int
from hamjax.prune import (
    Filter,
    Masks,
    _check_args,
    _check_block,
    _check_nm,
    _check_tree,
    _grads_of,
    _ones,
    _random_scores,
    _rank_tree,
    _sparsity,
    apply_masks,
    block_masks,
    check_masks,
    is_none,
    magnitude_masks,
    map_selected,
    nm_masks,
    random_masks,
    resolve_filter,
    saliency_masks,
    sparsity_of,
)

Schedule = Callable[[jax.Array], jax.Array]

PRUNERS = ("magnitude", "global_magnitude", "movement")
METHODS = ("magnitude", "global_magnitude", "random", "saliency", "block")


class PruneState(NamedTuple):
    """State of the mask transforms.

    Attributes:
      masks: the mask tree of the last ``apply`` (all ``True`` after ``init``).
      count: int32 number of ``apply`` calls.
    """

    masks: Masks
    count: jax.Array


def _recomputing(name: str, masks_fn, filter) -> Transform:
    """A transform whose every ``apply`` recomputes masks from params with ``masks_fn(params)``."""

    def init(params):
        return PruneState(_ones(name, params, filter), jnp.zeros((), jnp.int32))

    def apply(params, state, **extra):
        del extra
        masks = masks_fn(params)
        return apply_masks(params, masks), PruneState(masks, state.count + 1)

    return Transform(init, apply)


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
        return PruneState(_ones("saliency_prune", params, filter), jnp.zeros((), jnp.int32))

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
        return MovementState(_ones("movement_prune", params, filter), scores, jnp.zeros((), jnp.int32))

    def apply(params, state, *, grads=None, **extra):
        del extra
        grads = _grads_of("movement_prune", grads)
        _check_tree("movement_prune", "grads", params, grads, masks=False)
        scores = jax.tree.map(
            lambda s, w, g: None if s is None else s - w.astype(jnp.float32) * g.astype(jnp.float32),
            state.scores,
            params,
            grads,
            is_leaf=is_none,
        )
        masks = _rank_tree(scores, _sparsity("movement_prune", sparsity), scope)
        return apply_masks(params, masks), MovementState(masks, scores, state.count + 1)

    return Transform(init, apply)


def nm_prune(n: int, m: int, *, filter: Filter | None = None) -> Transform:
    """Transform that applies N:M sparsity on every ``apply`` (see :func:`nm_masks`).

    Args:
      n: weights kept per group of ``m`` (static).
      m: group size along the input axis (static).
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
    n, m = _check_nm("nm_prune", n, m)
    resolve_filter("nm_prune", filter)
    return _recomputing("nm_prune", lambda p: nm_masks(p, n, m, filter=filter), filter)


def block_prune(sparsity, *, block=(4, 4), filter: Filter | None = None) -> Transform:
    """Transform that prunes whole tiles of smallest norm (see :func:`block_masks`).

    Args:
      sparsity: fraction of tiles in ``[0, 1)`` per layer (possibly traced).
      block: ``(rows, cols)`` of a tile (static).
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
    _check_block("block_prune", block)
    _check_args("block_prune", sparsity, filter)
    return _recomputing("block_prune", lambda p: block_masks(p, sparsity, block=block, filter=filter), filter)


def polynomial_schedule(
    final_sparsity, *, initial_sparsity=0.0, begin_step: int = 0, end_step: int, frequency: int = 1, power=3
) -> Schedule:
    """The gradual pruning schedule of Zhu & Gupta (2017).

    .. math::

        s_t = s_f + (s_i - s_f) \\left(1 - \\frac{t' - t_0}{n \\Delta t}\\right)^{p}

    where ``t' = t0 + floor((t - t0) / Δt) Δt`` is ``t`` clipped to
    ``[t0, t0 + n Δt]`` and held between updates: sparsity moves every
    ``frequency`` steps, is ``s_i`` before ``begin_step`` and ``s_f`` from
    ``end_step`` on.

    Args:
      final_sparsity: ``s_f`` in ``[0, 1)``; may be an array leaf that a
        search varies.
      initial_sparsity: ``s_i`` in ``[0, 1)``.
      begin_step: ``t0 >= 0``.
      end_step: ``t0 + n Δt``, > ``begin_step``.
      frequency: ``Δt >= 1`` steps between sparsity updates.
      power: ``p > 0`` (3 in the paper).

    Returns:
      ``schedule(step) -> sparsity``, a float32 scalar; jittable in ``step``.

    Examples:
      >>> from hamjax import prune
      >>> schedule = prune.polynomial_schedule(0.8, end_step=10)
      >>> [round(float(schedule(t)), 4) for t in (0, 5, 10, 20)]
      [0.0, 0.7, 0.8, 0.8]

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
      pruning for model compression", ICLR workshop 2018 (arXiv 1710.01878).
    """
    name = "polynomial_schedule"
    s_f = _sparsity(name, final_sparsity, "final_sparsity")
    s_i = _sparsity(name, initial_sparsity, "initial_sparsity")
    begin = check_int(name, "begin_step", begin_step, minimum=0)
    end = check_int(name, "end_step", end_step, minimum=begin + 1)
    every = check_int(name, "frequency", frequency, minimum=1)
    if isinstance(power, bool) or not isinstance(power, int | float) or not power > 0:
        raise ValueError(f"{name}: power must be a number > 0, got {power!r}")

    def schedule(step):
        t = jnp.clip(jnp.asarray(step, jnp.int32), begin, end)
        t = jnp.where(t >= end, end, begin + (t - begin) // every * every)
        frac = (t - begin).astype(jnp.float32) / (end - begin)
        return s_f + (s_i - s_f) * (1.0 - frac) ** power

    return schedule


def constant_schedule(sparsity) -> Schedule:
    """A schedule that is ``sparsity`` at every step (one-shot pruning at the first update).

    Args:
      sparsity: fraction in ``[0, 1)``, possibly an array leaf.

    Returns:
      ``schedule(step) -> sparsity`` as a float32 scalar.

    Examples:
      >>> from hamjax import prune
      >>> float(prune.constant_schedule(0.5)(123))
      0.5

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    s = _sparsity("constant_schedule", sparsity)

    def schedule(step):
        del step
        return s

    return schedule


class MaskedState(NamedTuple):
    """Optimizer state of :func:`masked_optimizer`.

    Read the masks out of any optax chain with
    ``optax.tree_utils.tree_get(opt_state, "masks")``.

    Attributes:
      inner_state: the wrapped optimizer's state.
      masks: the current mask tree (bool arrays, ``None`` at unpruned leaves).
      step: int32 number of updates done.
      scores: float32 movement scores at masked leaves (``pruner="movement"``
        with a schedule), else ``None``.
    """

    inner_state: Any
    masks: Any
    step: jax.Array
    scores: Any


def masked_optimizer(
    inner: optax.GradientTransformation,
    masks=None,
    *,
    pruner: str | None = "magnitude",
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
    movement scores ``S -= w g``) at sparsity ``schedule(step)``, inside
    ``lax.cond``, so gradual pruning runs in one jitted step. With a schedule,
    :func:`hamjax.train.fit`'s ``result.params`` is the best validation
    snapshot, which may predate the final sparsity; ``result.state.params``
    is the last one.

    Args:
      inner: the optimizer to wrap.
      masks: a fixed mask tree over the params the optimizer sees (for
        :func:`hamjax.train.fit`, ``trainable(apply_fn, params)``); with a
        schedule, the masks to start from. ``None`` starts dense.
      pruner: how a schedule recomputes masks: ``"magnitude"`` (per layer),
        ``"global_magnitude"`` or ``"movement"``; ``None`` for fixed masks.
      schedule: ``schedule(step) -> sparsity`` (e.g.
        :func:`polynomial_schedule`), a number (constant), or ``None``.
      update_every: steps between mask recomputations (>= 1).
      filter: which leaves a schedule prunes when ``masks`` is ``None``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`MaskedState`; ``update`` requires ``params``.

    Raises:
      ValueError: for an unknown ``pruner``, neither ``masks`` nor
        ``schedule``, a schedule without a pruner, or masks that do not
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
    name = "masked_optimizer"
    if pruner is not None and pruner not in PRUNERS:
        raise ValueError(f"{name}: pruner must be one of {PRUNERS} or None, got {pruner!r}")
    if masks is None and schedule is None:
        raise ValueError(f"{name}: give masks= (fixed masks) or schedule= (gradual pruning); got neither")
    if schedule is not None and pruner is None:
        raise ValueError(f"{name}: schedule= needs a pruner in {PRUNERS}, got pruner=None")
    if schedule is not None and not callable(schedule):
        schedule = constant_schedule(schedule)
    update_every = check_int(name, "update_every", update_every, minimum=1)
    resolve_filter(name, filter)
    inner = optax.with_extra_args_support(inner)
    movement = schedule is not None and pruner == "movement"
    scope = "global" if pruner == "global_magnitude" else "layer"

    def init_fn(params):
        if masks is not None:
            check_masks(params, masks)
            start = jax.tree.map(jnp.copy, masks)  # fit donates its state; the caller's masks must survive
        else:
            start = _ones(name, params, filter)
        scores = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), start) if movement else None
        return MaskedState(inner.init(params), start, jnp.zeros((), jnp.int32), scores)

    def update_fn(updates, state, params=None, **extra):
        if params is None:
            raise ValueError(f"{name}: update needs params= (to keep pruned weights at zero), got None")
        old = state.masks
        grads = jax.tree.map(
            lambda m, g: g if m is None else jnp.where(m, g, jnp.zeros((), g.dtype)), old, updates, is_leaf=is_none
        )
        inner_updates, inner_state = inner.update(grads, state.inner_state, params, **extra)
        step = state.step + 1
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
                return _rank_tree(source, _sparsity(name, schedule(step)), scope)

            new = jax.lax.cond(step % update_every == 0, recompute, lambda: old)
        both = jax.tree.map(lambda a, b: None if a is None else a & b, old, new, is_leaf=is_none)
        return _restrict(both, inner_updates, params), MaskedState(inner_state, new, step, scores)

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


def _cycle_masks(method, apply_fn, params, sparsity, *, filter, block, dataset, config, cycle):
    from hamjax import train as train_lib

    tp = trainable(apply_fn, params)
    if method in ("magnitude", "global_magnitude"):
        scope = "global" if method == "global_magnitude" else "layer"
        return magnitude_masks(tp, sparsity, filter=filter, scope=scope)
    if method == "block":
        return block_masks(tp, sparsity, block=block, filter=filter)
    if method == "random":
        # Weights an earlier cycle removed rank lowest, so cycles prune nested sets as magnitude does.
        key = jax.random.fold_in(jax.random.key(config.seed), cycle)
        scores = jax.tree.map(
            lambda u, w: None if u is None else jnp.where(w == 0, -1.0, u),
            _random_scores("iterative_prune", tp, key, filter),
            tp,
            is_leaf=is_none,
        )
        return _rank_tree(scores, _sparsity("iterative_prune", sparsity), "layer")
    grads = train_lib.batch_grads(apply_fn, params, dataset.train, config.batch_size, seed=config.seed)
    return saliency_masks(tp, grads, sparsity, filter=filter)


def iterative_prune(
    apply_fn,
    params,
    dataset,
    sparsities: Sequence[float],
    config,
    *,
    method: str = "magnitude",
    filter=None,
    block=(4, 4),
    progress: bool = False,
) -> tuple[Any, Any, list[dict]]:
    """Prune -> finetune cycles: prune to each target sparsity, then retrain with the masks kept.

    For each ``s`` in ``sparsities`` the trainable params are pruned with
    ``method`` (weights already at zero rank lowest, so the masks of
    successive cycles are nested for increasing targets), then finetuned by
    :func:`hamjax.train.fit` with ``masked_optimizer(make_optimizer(config),
    masks)``.

    Args:
      apply_fn: the model's apply function (NNX, Linen or plain).
      params: its params.
      dataset: a :class:`hamjax.data.Dataset`.
      sparsities: target sparsities in ``[0, 1)``, usually increasing.
      config: the :class:`hamjax.TrainConfig` of each finetuning cycle.
      method: one of ``METHODS``: ``"magnitude"``, ``"global_magnitude"``,
        ``"random"``, ``"saliency"`` (SNIP on one training batch) or
        ``"block"``.
      filter: ``filter(path, leaf) -> bool`` over the trainable params.
      block: the tile of ``method="block"``.
      progress: show fit's progress bar.

    Returns:
      ``(params, masks, history)``: the final params (pruned weights exactly
      zero), the last masks over ``trainable(apply_fn, params)``, and one
      dict per cycle: ``target_sparsity``, ``sparsity`` (measured) and
      ``val_accuracy``.

    Examples:
      >>> import hamjax
      >>> from hamjax import prune
      >>> ds = hamjax.data.load("digits")
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10)))
      >>> cfg = hamjax.TrainConfig(epochs=2, batch_size=64, learning_rate=3e-3)
      >>> params, masks, history = prune.iterative_prune(apply_fn, params, ds, [0.5, 0.8], cfg)
      >>> [round(h["sparsity"], 2) for h in history]
      [0.5, 0.8]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    from hamjax import data as data_lib
    from hamjax import train as train_lib

    name = "iterative_prune"
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
    targets = [sparsities] if isinstance(sparsities, int | float) else list(sparsities)
    if not targets:
        raise ValueError(f"{name}: sparsities must hold at least one target in [0, 1), got {sparsities!r}")
    for s in targets:
        _sparsity(name, s, "sparsities")
    resolve_filter(name, filter)
    total = data_lib.steps_per_epoch(len(dataset.train.y), config.batch_size) * config.epochs
    masks, history = None, []
    for cycle, s in enumerate(targets):
        masks = _cycle_masks(
            method, apply_fn, params, s, filter=filter, block=block, dataset=dataset, config=config, cycle=cycle
        )
        params = with_trainable(apply_fn, params, apply_masks(trainable(apply_fn, params), masks))
        optimizer = masked_optimizer(train_lib.make_optimizer(config, total), masks, pruner=None)
        result = train_lib.fit(apply_fn, params, dataset, config, optimizer=optimizer, progress=progress)
        params = with_trainable(apply_fn, result.params, apply_masks(trainable(apply_fn, result.params), masks))
        measured = sparsity_of(trainable(apply_fn, params), masks)
        val = train_lib.evaluate(apply_fn, params, dataset.val)["accuracy"]
        history.append({"target_sparsity": float(s), "sparsity": measured, "val_accuracy": val})
    return params, masks, history


__all__ = [
    "METHODS",
    "PRUNERS",
    "MaskedState",
    "MovementState",
    "PruneState",
    "block_prune",
    "constant_schedule",
    "global_magnitude_prune",
    "iterative_prune",
    "magnitude_prune",
    "masked_optimizer",
    "movement_prune",
    "nm_prune",
    "polynomial_schedule",
    "random_prune",
    "saliency_prune",
]
