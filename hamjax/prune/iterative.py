"""Iterative pruning: prune -> finetune cycles that train between pruning steps.

This module runs :func:`hamjax.train.fit`, so it sits above the training
engine; nothing else in the family imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hamjax._base import trainable, with_trainable
from hamjax._checks import check_choice, check_fraction
from hamjax._select import is_none, resolve_filter
from hamjax.data import steps_per_epoch
from hamjax.jaxpr import weight_filter
from hamjax.prune.masked import masked_optimizer
from hamjax.prune.masks import apply_masks, magnitude_masks, saliency_masks, sparsity_of
from hamjax.prune.patterns import block_masks
from hamjax.prune.ranking import random_scores, rank_masks
from hamjax.train import batch_grads, evaluate, fit, make_optimizer

METHODS = ("magnitude", "global_magnitude", "random", "saliency", "block")
"""The ``method=`` values of :func:`iterative_prune`: how each cycle picks the weights to prune."""


def _cycle_masks(method, apply_fn, params, sparsity, *, filter, block, dataset, config, cycle):
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
            random_scores("iterative_prune", tp, key, filter),
            tp,
            is_leaf=is_none,
        )
        return rank_masks(scores, sparsity, "layer")
    grads = batch_grads(apply_fn, params, dataset.train, config.batch_size, seed=config.seed)
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
      filter: ``filter(path, leaf) -> bool`` over the trainable params;
        ``None`` selects the leaves ``apply_fn`` uses as dense or
        convolution weights (:func:`hamjax.jaxpr.weight_filter` on a
        training batch), not the name-based default.
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
      >>> params, masks, history = prune.iterative_prune(apply_fn, params, ds, [0.5, 0.8], cfg)  # doctest: +SKIP
      >>> [round(h["sparsity"], 2) for h in history]  # doctest: +SKIP
      [0.5, 0.8]

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015.
    """
    where = "iterative_prune"
    check_choice(where, "method", method, METHODS)
    targets = [sparsities] if isinstance(sparsities, int | float) else list(sparsities)
    if not targets:
        raise ValueError(f"{where}: sparsities must hold at least one target in [0, 1), got {sparsities!r}")
    for s in targets:
        check_fraction(where, "sparsities", s)
    resolve_filter(where, filter)
    if filter is None:
        filter = weight_filter(apply_fn, params, dataset.train.x[:2])
    total = steps_per_epoch(len(dataset.train.y), config.batch_size) * config.epochs
    masks, history = None, []
    for cycle, s in enumerate(targets):
        masks = _cycle_masks(
            method, apply_fn, params, s, filter=filter, block=block, dataset=dataset, config=config, cycle=cycle
        )
        params = with_trainable(apply_fn, params, apply_masks(trainable(apply_fn, params), masks))
        optimizer = masked_optimizer(make_optimizer(config, total), masks, method=None)
        result = fit(apply_fn, params, dataset, config, optimizer=optimizer, progress=progress)
        params = with_trainable(apply_fn, result.params, apply_masks(trainable(apply_fn, result.params), masks))
        measured = sparsity_of(trainable(apply_fn, params), masks)
        val = evaluate(apply_fn, params, dataset.val)["accuracy"]
        history.append({"target_sparsity": float(s), "sparsity": measured, "val_accuracy": val})
    return params, masks, history
