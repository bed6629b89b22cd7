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

import dataclasses
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
from hamjax._checks import check_choice, check_int, check_number, check_positive
from hamjax._losses import cross_entropy
from hamjax.footprint import CompiledMemory, compiled_memory
from hamjax.graph.remat import REMAT_POLICIES
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

__all__ = [
    "LOSS_SCALES",
    "OPTIMIZERS",
    "REMAT_POLICIES",
    "Objective",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "batch_grads",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "supervised",
]

Params = Any

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
LOSS_SCALES = precision_lib.LOSS_SCALES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What :func:`fit` does.

    Attributes:
      epochs: passes over the training split, an integer >= 1.
      batch_size: examples per step, an integer >= 1, at most the training split.
      learning_rate: peak learning rate, a finite number > 0.
      optimizer: one of ``OPTIMIZERS``.
      weight_decay: decoupled weight decay (``adamw``) or L2 added to the
        gradient (others); >= 0.
      warmup_steps: linear warm-up steps before cosine decay (an integer >= 0);
        0 keeps the learning rate constant.
      eval_every: steps between validations; ``None`` is once per epoch.
      patience: stop after this many validations without improvement;
        ``None`` never stops early.
      checkpoint_every: steps between checkpoints (with ``checkpoint_dir``);
        ``None`` is at the end of an epoch once ``checkpoint_seconds`` have
        passed since the last checkpoint (or the start). The last step is
        always saved.
      checkpoint_seconds: the least wall-clock time between two epoch-end
        checkpoints when ``checkpoint_every`` is ``None``, a number >= 0
        (0 saves every epoch). A checkpoint of a small model costs tens of
        milliseconds, more than an epoch on the bundled data; a crash loses
        at most this much training.
      seed: an integer; everything random (data order, dropout) derives from it.
      precision: a mixed-precision policy string such as
        ``"p=f32,c=bf16,o=f32"`` (see :class:`hamjax.precision.Policy`);
        ``None`` trains the model as it is.
      loss_scale: one of ``LOSS_SCALES``: ``"dynamic"`` wraps the optimizer
        in :func:`hamjax.precision.dynamic_loss_scale`, ``"auto"`` does so
        when the policy computes in float16, ``"none"`` never does.
      remat: one of ``REMAT_POLICIES``: ``"none"`` keeps every activation for
        the backward pass; ``"full"``, ``"dots"``, ... recompute the forward
        pass in checkpointed segments (:func:`hamjax.graph.rematerialize`),
        trading time for memory; the results agree within float rounding.
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    eval_every: int | None = None
    patience: int | None = None
    checkpoint_every: int | None = None
    checkpoint_seconds: float = 30.0
    seed: int = 0
    precision: str | None = None
    loss_scale: str = "auto"
    remat: str = "none"

    def __post_init__(self):
        def normalise(name, value):
            object.__setattr__(self, name, value)  # plain Python values, so the config stays JSON for checkpoints

        where = "TrainConfig"
        for name in ("epochs", "batch_size"):
            normalise(name, check_int(where, name, getattr(self, name), minimum=1))
        normalise("learning_rate", check_positive(where, "learning_rate", self.learning_rate))
        check_choice(where, "optimizer", self.optimizer, OPTIMIZERS)
        normalise("weight_decay", check_number(where, "weight_decay", self.weight_decay, minimum=0))
        normalise("warmup_steps", check_int(where, "warmup_steps", self.warmup_steps, minimum=0))
        for name in ("eval_every", "patience", "checkpoint_every"):
            if getattr(self, name) is not None:
                normalise(name, check_int(where, name, getattr(self, name), minimum=1))
        normalise("checkpoint_seconds", check_number(where, "checkpoint_seconds", self.checkpoint_seconds, minimum=0))
        normalise("seed", check_int(where, "seed", self.seed))
        if isinstance(self.precision, precision_lib.Policy):
            normalise("precision", str(self.precision))
        if self.precision is not None:
            try:
                precision_lib.Policy.parse(self.precision)
            except ValueError as err:
                raise ValueError(f"{where}: precision={self.precision!r} is not a policy: {err}") from None
        check_choice(where, "loss_scale", self.loss_scale, LOSS_SCALES)
        check_choice(where, "remat", self.remat, REMAT_POLICIES)


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer that ``config`` names, with its learning-rate schedule.

    Args:
      config: a :class:`TrainConfig`.
      total_steps: the number of steps the schedule spans.

    Returns:
      An ``optax.GradientTransformation``.

    Examples:
      >>> from hamjax.train import TrainConfig, make_optimizer
      >>> opt = make_optimizer(TrainConfig(optimizer="sgd"), total_steps=100)
    """
    if config.warmup_steps:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, config.warmup_steps, max(total_steps, config.warmup_steps + 1)
        )
    else:
        lr = config.learning_rate
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    base = {"adam": optax.adam, "sgd": optax.sgd, "momentum": lambda lr: optax.sgd(lr, momentum=0.9)}
    opt = base[config.optimizer](lr)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


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
    """

    params: Params
    state: TrainState
    history: list
    best_step: int
    stopped_early: bool
    resumed_from: int | None
    step_memory: CompiledMemory | None = None


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
        larger than the training split.

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
    per_epoch = data_lib.steps_per_epoch(len(train.y), config.batch_size)
    total = per_epoch * config.epochs
    eval_every = config.eval_every or per_epoch
    optimizer = optimizer or make_optimizer(config, total)
    apply_fn, params, optimizer = precision_lib.prepare_training(
        apply_fn, params, optimizer, config.precision, loss_scale=config.loss_scale
    )
    # Copies: the train step donates its state, and the caller's arrays must survive.
    params = jax.tree.map(jnp.array, params)
    state = TrainState(params, optimizer.init(trainable(apply_fn, params)), jnp.asarray(0, jnp.int32))
    record = {"history": [], "best_accuracy": -math.inf, "best_step": 0, "bad_evals": 0, "stopped_early": False}
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
            if _same_run(meta.get("config")) != _same_run(dataclasses.asdict(config)):
                raise ValueError(
                    f"checkpoint in {checkpoint_dir} was written with config {meta.get('config')}, "
                    f"not {dataclasses.asdict(config)}; use another directory"
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
    train_step = make_train_step(apply_fn, optimizer, seed=config.seed, objective=objective, remat=config.remat)
    eval_step = make_eval_step(apply_fn, loss_fn=loss_fn)
    start = int(state.count)
    step_memory = None
    if start < total:  # the executable the loop is about to run, read once
        idx = data_lib.batch_indices(len(train.y), config.batch_size, start, seed=config.seed)
        batch = None if per_example is None else jax.tree.map(lambda a, i=idx: a[i], per_example)
        step_memory = compiled_memory(train_step, state, train.x[idx], train.y[idx], objective.frozen, batch)
    bar = _Progress(progress, total, start)
    losses = []
    try:
        for step in range(start, total):
            if record["stopped_early"]:
                break
            idx = data_lib.batch_indices(len(train.y), config.batch_size, step, seed=config.seed)
            batch = None if per_example is None else jax.tree.map(lambda a, i=idx: a[i], per_example)
            state, metrics = train_step(state, train.x[idx], train.y[idx], objective.frozen, batch)
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
        best_params, state, record["history"], record["best_step"], record["stopped_early"], resumed_from, step_memory
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
    """A config without what changes memory or checkpoint timing, not results: a run resumes under other values."""
    return None if config is None else {k: v for k, v in config.items() if k not in _NOT_RESULTS}


_NOT_RESULTS = ("remat", "checkpoint_seconds")


def _meta(config, record):
    return {"config": dataclasses.asdict(config), "record": record}


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
