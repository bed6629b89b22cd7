"""Jitted training and evaluation on optax, with early stopping and exact resume.

Training works on any model of the contract, ``(apply_fn, params)``: an
:class:`~hamjax.ApplyFn` from :func:`~hamjax.functional` (NNX) or
:func:`~hamjax.linen_functional` (Linen), whose batch-norm statistics are
updated and whose dropout draws from a per-step key, or a plain
``apply_fn(params, x)``.

Everything that decides the result is a function of the seed and the step
number: the batch at step ``t`` is :func:`hamjax.data.batch_at` of ``t``,
and the dropout key is ``fold_in(key(seed), t)``. A checkpoint therefore
needs only the train state and the early-stopping record, and a run killed
and resumed ends with bit-identical params.

The jitted steps the loop runs (:class:`TrainState`, :class:`Objective`,
:func:`make_train_step`, :func:`evaluate`, ...) live in
:mod:`hamjax.train_steps` and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import data as data_lib
from hamjax import precision as precision_lib
from hamjax._base import trainable
from hamjax._losses import cross_entropy
from hamjax.footprint import CompiledMemory, memory_analysis
from hamjax.graph.remat import REMAT_POLICIES
from hamjax.parallel import DataParallel
from hamjax.train_config import (
    ADVERSARIAL_METHODS,
    LOSS_SCALES,
    OPTIMIZERS,
    TrainConfig,
    clip_by_leaf_norm,
    config_record,
    configure_optimizer,
    make_optimizer,
)
from hamjax.train_steps import (
    Objective,
    TrainState,
    batch_grads,
    evaluate,
    logit_count,
    make_eval_step,
    make_train_step,
    supervised,
)
from hamjax.train_views import train_hooks

__all__ = [
    "ADVERSARIAL_METHODS",
    "LOSS_SCALES",
    "OPTIMIZERS",
    "REMAT_POLICIES",
    "Objective",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "batch_grads",
    "clip_by_leaf_norm",
    "configure_optimizer",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "supervised",
    "train_hooks",
]

Params = Any


class TrainResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: the best params by validation accuracy (the last if no
        validation ran).
      state: the final :class:`TrainState`.
      history: one dict per validation: ``step``, ``train_loss``,
        ``val_loss``, ``val_accuracy``.
      best_step: the step of the returned params.
      stopped_early: whether patience ran out.
      resumed_from: the checkpoint step this run resumed from, or ``None``.
      step_memory: what XLA plans for one compiled training step
        (:func:`hamjax.measure.compiled_memory`: ``temp_bytes`` are the
        activations kept for the backward pass), or ``None`` where the backend
        reports nothing or no step ran.
      notes: the augmentation and regularisation the run used, in words
        (:attr:`hamjax.train_views.TrainHooks.notes`).
    """

    params: Params
    state: TrainState
    history: list
    best_step: int
    stopped_early: bool
    resumed_from: int | None
    step_memory: CompiledMemory | None = None
    notes: tuple[str, ...] = ()


def _compiled_first(compiled, jitted):
    """Call ``compiled``; once an argument's type or layout differs from what it was compiled for, call ``jitted``."""
    current = [compiled]

    def step(*args):
        if current[0] is compiled:
            try:
                return compiled(*args)
            except (TypeError, ValueError):  # raised before anything runs or is donated
                current[0] = jitted
        return jitted(*args)

    return step


def fit(
    apply_fn,
    params: Params,
    dataset: data_lib.Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    optimizer: optax.GradientTransformation | None = None,
    loss_fn: Callable = cross_entropy,
    objective: Objective | None = None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
    callback: Callable[[int, TrainState, dict], None] | None = None,
    parallel: DataParallel | None = None,
) -> TrainResult:
    """Train ``(apply_fn, params)`` on ``dataset.train``, validating on ``dataset.val``.

    With ``config.precision`` set, the model computes under that policy
    (:func:`hamjax.precision.with_policy`), the params are kept in its
    param dtype and the optimizer is wrapped for loss scaling as
    ``config.loss_scale`` says (:func:`hamjax.precision.prepare_training`);
    the returned params are in the param dtype, and inference under the
    policy is ``with_policy(apply_fn, config.precision)``.

    With ``checkpoint_dir``, the run saves every ``checkpoint_every`` steps
    and, when the directory already holds a checkpoint of this run, resumes
    from it: same params, optimizer state, step, data order and early
    stopping record, so the result equals an uninterrupted run's.

    With ``config.data_parallel`` (or ``parallel``) every batch is split
    over the devices of a :class:`hamjax.parallel.DataParallel` mesh and the
    state is replicated (or sharded by its rule): the losses equal one
    device's within float rounding. Under ``jax.distributed``
    (:func:`hamjax.parallel.initialize`) the mesh spans every process, each
    process reads only its rows of each batch, checkpoints are written once
    by the group (``checkpoint_dir`` on storage all processes share) and
    only process 0 shows progress.

    Args:
      apply_fn: the model's apply function (any kind of the contract).
      params: its initial params.
      dataset: a :class:`hamjax.data.Dataset`.
      config: a :class:`TrainConfig`.
      optimizer: overrides the optimizer ``config`` names (for example an
        optax chain that keeps pruning masks).
      loss_fn: ``loss_fn(logits, labels) -> scalar``.
      objective: replaces ``loss_fn`` with an :class:`Objective` (a
        distillation loss, for example); validation still reports the
        cross-entropy and accuracy of the model's logits.
      checkpoint_dir: where to save and resume; ``None`` keeps no checkpoint.
      progress: show a progress bar.
      callback: called as ``callback(step, state, metrics)`` after each
        step, after any checkpoint of that step is written.
      parallel: a :class:`hamjax.parallel.DataParallel` to train on (its
        devices, its ``param_rule``); ``None`` is ``DataParallel()`` over all
        devices when ``config.data_parallel``, else one device.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: before anything compiles, when ``dataset`` is not a
        :class:`hamjax.data.Dataset` (make one with
        :func:`hamjax.data.from_arrays`), or its train or val split is
        empty, has inputs and labels of different lengths, non-finite
        inputs, or labels that are not integers in ``[0, C)``, ``C`` being
        ``dataset.num_classes`` or the model's logit count, whichever is
        smaller (:func:`hamjax.data.check_dataset`); or for a batch size
        larger than the training split, or (data parallel) not divisible by
        the device count.

    Examples:
      >>> import hamjax
      >>> ds = hamjax.data.load("digits")
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> result = hamjax.train.fit(apply_fn, params, ds, hamjax.TrainConfig(epochs=2), progress=False)
      >>> result.history[-1]["val_accuracy"] > 0.5
      True
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(
            f"fit: config must be a hamjax.TrainConfig, got {type(config).__name__}; pass TrainConfig(...)"
        )
    if checkpoint_dir is not None:
        from hamjax.checkpoint import check_directory

        check_directory("fit", "checkpoint_dir", checkpoint_dir)  # a file or unusable directory, before any work
    num_classes = _check_data("fit", apply_fn, params, dataset)
    train = dataset.train
    if config.batch_size > len(train.y):
        raise ValueError(
            f"fit: TrainConfig.batch_size={config.batch_size} exceeds the {len(train.y)} training examples"
        )
    if parallel is not None and not isinstance(parallel, DataParallel):
        raise ValueError(f"fit: parallel must be a hamjax.parallel.DataParallel or None, got {parallel!r}")
    if parallel is None and config.data_parallel:
        parallel = DataParallel()
    if parallel is not None:
        parallel.check_batch("fit", config.batch_size)  # before any work, so no checkpoint is touched
    per_epoch = data_lib.steps_per_epoch(len(train.y), config.batch_size)
    total = per_epoch * config.epochs
    eval_every = config.eval_every or per_epoch
    optimizer = configure_optimizer(optimizer or make_optimizer(config, total), config)
    apply_fn, params, optimizer = precision_lib.prepare_training(
        apply_fn, params, optimizer, config.precision, loss_scale=config.loss_scale
    )
    # Copies: the train step donates its state, and the caller's arrays must survive.
    params = jax.tree.map(jnp.array, params)
    state = TrainState(params, optimizer.init(trainable(apply_fn, params)), jnp.asarray(0, jnp.int32))
    record = {"history": [], "best_accuracy": -math.inf, "best_step": 0, "bad_evals": 0, "stopped_early": False}
    if parallel is not None:  # replicated or sharded by the rule; restored checkpoints keep these shardings
        state, params = parallel.place(state), parallel.place(params)
    best_params = jax.tree.map(jnp.copy, params)

    ckpt, resumed_from = None, None
    if checkpoint_dir is not None:
        from hamjax.checkpoint import Checkpointer

        ckpt = Checkpointer(
            checkpoint_dir,
            every=config.checkpoint_every or per_epoch,
            min_interval_s=0.0 if config.checkpoint_every else config.checkpoint_seconds,
        )
        restored = ckpt.restore_latest({"state": state, "best_params": best_params})
        if restored is not None:
            resumed_from, tree, meta = restored
            if _same_run(meta.get("config")) != _same_run(config_record(config)):
                raise ValueError(
                    f"checkpoint in {checkpoint_dir} was written with config {meta.get('config')}, "
                    f"not {config_record(config)}; use another directory"
                )
            state, best_params, record = tree["state"], tree["best_params"], meta["record"]

    objective = objective or supervised(loss_fn)
    per_example = objective.per_example
    if per_example is not None:
        rows = {np.shape(a)[0] for a in jax.tree.leaves(per_example)}
        if rows != {len(train.y)}:
            raise ValueError(
                f"fit: objective.per_example has leading sizes {sorted(rows)}; expected {len(train.y)}, "
                "one row per training example"
            )
    data_range = None  # the clip range of adversarial inputs, read from the data only when they are made
    if config.adversarial != "none":
        data_range = (float(np.min(train.x)), float(np.max(train.x)))
    hooks = train_hooks(config, num_classes, data_range)
    train_step = make_train_step(
        apply_fn, optimizer, seed=config.seed, objective=objective, remat=config.remat, hooks=hooks
    )
    eval_step = make_eval_step(apply_fn, loss_fn=loss_fn)

    frozen = objective.frozen if parallel is None else parallel.place(objective.frozen)  # a teacher's params

    def batch_at(step):
        """The step's inputs, labels and per-example rows; under ``parallel`` global arrays of this process's rows."""
        idx = data_lib.batch_indices(len(train.y), config.batch_size, step, seed=config.seed)
        if parallel is not None:
            idx = parallel.process_rows(idx)
        batch = None if per_example is None else jax.tree.map(lambda a: a[idx], per_example)
        arrays = (train.x[idx], train.y[idx], batch)
        return arrays if parallel is None else parallel.global_batch(arrays)

    start = int(state.count)
    step_memory = None
    if start < total:  # compiled once: the loop runs the executable whose memory plan is read here
        x, y, batch = batch_at(start)
        compiled = train_step.lower(state, x, y, frozen, batch).compile()
        step_memory = memory_analysis(compiled)
        train_step = _compiled_first(compiled, train_step)
    bar = _Progress(progress and jax.process_index() == 0, total, start)
    losses = []
    try:
        for step in range(start, total):
            if record["stopped_early"]:
                break
            x, y, batch = batch_at(step)
            state, metrics = train_step(state, x, y, frozen, batch)
            if parallel is not None:  # keep the layout asked for, whatever XLA chose for the outputs
                state = parallel.place(state)
            losses.append(metrics["loss"])
            done = step + 1
            if done % eval_every == 0 or done == total:
                val = evaluate(apply_fn, state.params, dataset.val, eval_step=eval_step, num_classes=num_classes)
                train_loss = float(np.mean(jax.device_get(losses)))
                losses = []
                record["history"].append(
                    {"step": done, "train_loss": train_loss, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
                )
                if val["accuracy"] > record["best_accuracy"]:
                    record.update(best_accuracy=val["accuracy"], best_step=done, bad_evals=0)
                    best_params = jax.tree.map(jnp.copy, state.params)
                else:
                    record["bad_evals"] += 1
                    if config.patience is not None and record["bad_evals"] >= config.patience:
                        record["stopped_early"] = True
                bar.describe(train_loss, val["accuracy"])
            bar.advance(done)
            if ckpt is not None:
                last = done == total or record["stopped_early"]
                ckpt.maybe_save(done, {"state": state, "best_params": best_params}, _meta(config, record), last=last)
            if callback is not None:
                callback(done, state, metrics)
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    if not record["history"]:
        best_params = state.params
    return TrainResult(
        best_params,
        state,
        record["history"],
        record["best_step"],
        record["stopped_early"],
        resumed_from,
        step_memory,
        hooks.notes,
    )


def _check_data(where: str, apply_fn, params, dataset) -> int:
    """Checks ``dataset``'s train and val splits once, before anything compiles; returns the label bound.

    Labels must lie below ``dataset.num_classes`` and below the model's logit
    count (one abstract trace on one example), whichever is smaller.
    """
    data_lib.check_dataset(where, "dataset", dataset)
    count = logit_count(apply_fn, params, dataset.train.x[:1])
    if count is None or count >= dataset.num_classes:
        return dataset.num_classes
    for key in ("train", "val"):
        split = getattr(dataset, key)
        data_lib.check_labels(where, f"dataset.{key}.y", split.y, num_classes=count, of=f"the model's {count} logits")
    return count


def _same_run(config: dict | None) -> dict | None:
    """A config without what changes memory or checkpoint timing, not results: a run resumes under other values.

    Fields added since a checkpoint was written count as their defaults, so an older run still resumes.
    """
    if config is None:
        return None
    config = {**_DEFAULTS, **config}
    return {k: v for k, v in config.items() if k not in _NOT_RESULTS}


_NOT_RESULTS = ("remat", "checkpoint_seconds", "data_parallel")
_DEFAULTS = config_record(TrainConfig())


def _meta(config, record):
    return {"config": config_record(config), "record": record}


class _Progress:
    def __init__(self, enabled: bool, total: int, start: int):
        self._progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._progress.add_task("train", total=total, completed=start, info="")
        self._progress.start()

    def advance(self, completed: int):
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)

    def describe(self, loss: float, accuracy: float):
        if self._progress is not None:
            self._progress.update(self._task, info=f"loss {loss:.4f} val acc {accuracy:.4f}")

    def close(self):
        if self._progress is not None:
            self._progress.stop()
