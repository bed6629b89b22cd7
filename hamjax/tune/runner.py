"""The batched ask/tell loop: :func:`run` trains the trials of a study as members of one population.

Each round trains every live member some epochs in one compiled call per
shape bucket (:meth:`hamjax.search.population.Population.train_epochs`),
scoring it on the validation split after each epoch inside the same call: one
epoch when a pruner decides after each, else the largest power of two that
no live member overshoots (a study without pruning trains its trials' epochs
in one call). Each member then reports its validation accuracy at each of
its epochs; the study's pruner decides per member.
A finished, pruned or diverged member is told at once and its slot is
refilled with a newly asked trial (fresh params, new hyperparameters, epoch
0), so the batch stays full until the budget is spent: asynchronous
successive halving without idle slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from hamjax import data, measure
from hamjax._checks import check_choice, check_int, check_number
from hamjax.data.checks import check_dataset
from hamjax.search.population import PopulationState
from hamjax.search.trainer import EXECUTIONS
from hamjax.tune import slots
from hamjax.tune import study as studies
from hamjax.tune.bookkeeping import ask_batch, tell_batch
from hamjax.tune.models import STRUCTURAL, Model, Models, check_builder
from hamjax.tune.result import TuneResult
from hamjax.tune.samplers import check_objectives, grid_size, judging_order, make_pruner, make_sampler
from hamjax.tune.space import Space

EVAL_ROWS = 2048  # validation rows scored at once


class _Loop:
    """One run's mutable bookkeeping: buckets, counters, the convergence watch."""

    def __init__(self, models, dataset, space, study, *, batch, epochs, seed, objectives):
        self.models, self.dataset, self.space = models, dataset, space
        self.study, self.batch, self.epochs = study, batch, epochs
        self.seed, self.objectives = seed, objectives
        self.buckets: dict[tuple, slots.Bucket] = {}
        self.distributions = space.distributions()
        self.member_epochs = 0
        self.finished = 0
        self.latencies: dict[tuple, float] = {}
        self.best = -math.inf
        self.narrowed = False
        self.since_best = 0

    # members -------------------------------------------------------------------------------------------
    def model(self, values: Mapping) -> Model:
        """The model of a trial's structural bucket (its ``width``, ``depth``, ``activation``)."""
        return self.models.get(tuple((n, v) for n, v in self.space.bucket(values) if n in STRUCTURAL))

    def members_init(self, members: Sequence[dict], rows: int | None = None) -> PopulationState:
        """Fresh states of ``members`` (one bucket), padded to ``rows`` with copies of the first (no recompiles)."""
        model = self.model(members[0]["values"])
        key = jax.random.key(self.seed)
        trees = [model.params(jax.random.fold_in(key, m["trial"].number)) if callable(model.params) else model.params
                 for m in members]  # fmt: skip
        pad = (rows or len(members)) - len(members)
        stacked = slots.stack(trees + trees[:1] * pad)
        values = [m["values"] for m in members] + [members[0]["values"]] * pad
        return model.trainer.init(stacked, self.space.hparams(values, steps=self.total_steps))

    def total_steps(self, values: Mapping) -> int:
        """The optimizer steps of a trial that is not pruned: its epochs' steps at its batch size."""
        n = len(self.dataset.train.y)
        return data.steps_per_epoch(n, min(int(values.get("batch_size", self._batch_size())), n)) * self.epochs

    def place(self, members: Sequence[dict]) -> None:
        """Put newly asked members into their buckets' free slots, growing a bucket (powers of two) when full."""
        from optuna.trial import TrialState

        try:  # build every new structure first: a builder that fails leaves none of these trials RUNNING
            for m in members:
                self.model(m["values"])
        except BaseException:
            self.tell([(m["trial"], None, TrialState.FAIL) for m in members])
            raise
        by_bucket: dict[tuple, list[dict]] = {}
        for m in members:
            by_bucket.setdefault(self.space.bucket(m["values"]), []).append(m)
        for key, new in by_bucket.items():
            bucket = self.buckets.setdefault(key, slots.Bucket(int(dict(key).get("batch_size", self._batch_size()))))
            free = [i for i, m in enumerate(bucket.slots) if m is None]
            if len(free) < len(new):
                needed = len(bucket.slots) - len(free) + len(new)
                target = min(max(1 << (needed - 1).bit_length(), len(bucket.slots)), self.batch)
                target = max(target, needed)
                # idle slots: copies of one member, initialised once
                pad = slots.repeat(self.members_init(new[:1]), target - len(bucket.slots))
                bucket.state = pad if bucket.state is None else slots.concat(bucket.state, pad)
                bucket.slots += [None] * (target - len(bucket.slots))
                free = [i for i, m in enumerate(bucket.slots) if m is None]
            # Always a bucket's full size, the rows past the new members aimed out of range and dropped,
            # so that refilling any number of slots runs the same compiled scatter.
            capacity = len(bucket.slots)
            index = np.full(capacity, capacity, np.int32)
            index[: len(new)] = free[: len(new)]
            bucket.state = slots.scatter(bucket.state, index, self.members_init(new, rows=capacity))
            for i, m in zip(index, new, strict=False):
                bucket.slots[int(i)] = m

    def _batch_size(self) -> int:
        return int(self.space.fixed.get("batch_size", 128))

    def ask(self, count: int) -> list[dict]:
        if count <= 0:
            return []
        trials = ask_batch(self.study, count, self.distributions)
        return [{"trial": t, "values": self.space.values(t.params), "epoch": 0} for t in trials]

    # one round -----------------------------------------------------------------------------------------
    def epoch_index(self, batch_size: int, round_: int, epochs: int) -> np.ndarray:
        """``(epochs, steps, batch)`` training rows of rounds ``round_`` on (every member sees the same batches)."""
        n = len(self.dataset.train.y)
        batch_size = min(batch_size, n)
        steps = data.steps_per_epoch(n, batch_size)
        first = round_ * steps
        index = [data.batch_indices(n, batch_size, first + t, seed=self.seed) for t in range(epochs * steps)]
        return np.stack(index).reshape(epochs, steps, batch_size)

    def span(self, pruning: bool) -> int:
        """Epochs the next call trains: 1 when a pruner decides after each; else every live member's last
        epochs when they all have them left (one call a trial), or the largest power of two that no live
        member overshoots (few compiled shapes)."""
        if pruning:
            return 1
        left = min(self.epochs - b.slots[i]["epoch"] for b in self.buckets.values() for i in b.live)
        return left if left == self.epochs else 1 << (left.bit_length() - 1)

    def latency(self, apply_fn, params) -> float:
        key = (id(apply_fn), *((np.shape(a), str(a.dtype)) for a in jax.tree.leaves(params)))
        if key not in self.latencies:
            runner = measure.JaxRunner(apply_fn, params)
            self.latencies[key] = measure.latency(runner, self.dataset.val.x[:1], warmup=5, runs=30).p50_ms
        return self.latencies[key]

    def objective_values(self, model: Model, state: PopulationState, i: int, accuracy: float) -> list[float]:
        values = []
        member = None
        for name in self.objectives:
            if name == "accuracy":
                values.append(accuracy)
                continue
            member = jax.tree.map(lambda a: a[i], state.params) if member is None else member
            if name == "size":
                values.append(float(sum(int(np.count_nonzero(np.asarray(a))) for a in jax.tree.leaves(member))))
            else:
                values.append(self.latency(model.apply_fn, member))
        return values

    def tell(self, told: list) -> None:
        """Finish a round's trials in one batch: ``told`` holds ``(trial, values or None, state)``."""
        if told:
            trials, values, states = zip(*told, strict=True)
            tell_batch(self.study, trials, values, states=states)
            self.finished += len(told)

    def watch(self, accuracy: float, min_delta: float) -> None:
        if accuracy > self.best + min_delta:
            self.best, self.since_best = accuracy, 0
        else:
            self.since_best += 1

    def round(self, round_: int, *, pruning: bool, min_delta: float) -> int:
        """Train every bucket's members some epochs in one call each, then report, prune, finish and tell them.

        Returns the number of epochs trained (:meth:`span`).
        """
        from optuna.trial import TrialState

        told: list = []
        span = self.span(pruning)
        train, val = self.dataset.train, self.dataset.val
        for bucket in list(self.buckets.values()):
            live = bucket.live
            if not live:
                continue
            index = self.epoch_index(bucket.batch_size, round_, span)
            model = self.model(bucket.slots[live[0]]["values"])
            bucket.state, _, scores = model.trainer.train_epochs(
                bucket.state, train.x, train.y, index, val.x, val.y, eval_rows=EVAL_ROWS
            )
            accuracies, losses = np.asarray(scores["accuracy"], np.float64), np.asarray(scores["loss"])  # (P, span)
            if pruning:  # a successive-halving pruner promotes each epoch's cohort as a synchronous rung would
                epochs_now = [bucket.slots[i]["epoch"] for i in live]
                live = judging_order(live, epochs_now, accuracies[live, 0].tolist(), self.study.pruner)
            for i in live:
                member = bucket.slots[i]
                trial = member["trial"]
                for j in range(span):
                    member["epoch"] += 1
                    self.member_epochs += 1
                    accuracy = float(accuracies[i, j])
                    if not math.isfinite(losses[i, j]):
                        trial.set_user_attr(studies.DIVERGED_ATTR, True)
                        told.append((trial, None, TrialState.FAIL))
                        self.watch(-math.inf, min_delta)
                        break
                    if len(self.objectives) == 1:  # Optuna keeps intermediate values of one objective only
                        trial.report(accuracy, member["epoch"])
                    if member["epoch"] >= self.epochs:
                        told.append(
                            (trial, self.objective_values(model, bucket.state, i, accuracy), TrialState.COMPLETE)
                        )
                        self.watch(accuracy, min_delta)
                        break
                    if pruning and trial.should_prune():
                        told.append((trial, None, TrialState.PRUNED))
                        self.watch(-math.inf, min_delta)
                        break
                else:
                    continue
                bucket.slots[i] = None
        self.tell(told)
        return span

    def abandon(self) -> None:
        """Fail every live trial (an interrupted run), leaving its slot empty."""
        from optuna.trial import TrialState

        told = []
        for bucket in self.buckets.values():
            for i in bucket.live:
                told.append((bucket.slots[i]["trial"], None, TrialState.FAIL))
                bucket.slots[i] = None
        self.tell(told)

    @property
    def live(self) -> int:
        return sum(len(b.live) for b in self.buckets.values())


def run(
    apply_fn: Any,
    params: Any,
    dataset: Any,
    space: Space | Mapping,
    *,
    trials: int,
    batch: int,
    sampler: str = "tpe",
    pruner: str | None = None,
    objectives: str | Sequence[str] = ("accuracy",),
    storage: Any = None,
    study_name: str | None = None,
    epochs: int = 3,
    seed: int = 0,
    execution: str | None = None,
    teacher: tuple | None = None,
    enqueue: Sequence[Mapping] | Any = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    narrow_after: int | None = None,
    narrow_quantile: float = 0.25,
    progress: bool = True,
    model: Callable | None = None,
) -> TuneResult:
    """Tune hyperparameters with an Optuna study whose trials train in batches, as one population.

    Args:
      apply_fn: the model's apply function (any kind of the contract); ``None`` with ``model``.
      params: every trial's starting params, or ``init(key) -> params`` for
        fresh params per trial (the key folded from ``seed`` and the trial
        number); ``None`` with ``model``.
      dataset: a :class:`hamjax.data.Dataset`; trials train on ``train`` and are scored on ``val``.
      space: a :class:`hamjax.tune.Space` or its table.
      trials: the study's trial budget: COMPLETE, PRUNED and diverged trials
        count, earlier runs of the study included (running the call again
        resumes); with the grid sampler at most the grid's size.
      batch: trials trained at once (the population size), 1 to ``trials``.
      sampler: one of :data:`hamjax.tune.samplers.SAMPLERS`, or an Optuna sampler.
      pruner: one of :data:`hamjax.tune.samplers.PRUNERS`, ``None``, or an
        Optuna pruner (``HyperbandPruner(reduction_factor=4)``); one objective only.
      objectives: from ``("accuracy", "size", "latency")``, accuracy
        (maximised) first; size is the nonzero parameter count and latency
        the median jit latency at batch 1 in ms (measured once per param
        shape), both minimised.
      storage: ``None`` (in memory), an Optuna storage URL or object.
      study_name: the study to create or resume.
      epochs: epochs of a trial that is not pruned (the pruners' rungs); a
        trial's batch size is its ``batch_size`` (searched or fixed), else 128.
      seed: seeds the sampler, the trials' params and the batch order.
      execution: how members run (:data:`hamjax.search.trainer.EXECUTIONS`),
        recorded in the study: ``None`` reuses the study's record, else
        ``"vmap"`` (no timing, the same on every run); ``"auto"`` reuses the
        record or times the candidates once on the real shapes (three compiles).
      teacher: ``(apply_fn, params)`` for distillation hyperparameters.
      enqueue: starting points: a list of ``name -> value`` dicts, or an
        earlier ``optuna.Study`` whose ``batch`` best trials are enqueued.
      patience: stop asking new trials once this many finished trials in a
        row have not improved the best accuracy by more than ``min_delta``
        (``None``: never); running trials still finish.
      min_delta: the improvement that counts.
      narrow_after: once this many trials count, later trials are asked
        from the space spanned by the top ``narrow_quantile`` of COMPLETE
        trials (:meth:`hamjax.tune.Space.narrowed`), recorded in the study's
        user attrs and kept when it resumes; ``None``: never narrow.
      narrow_quantile: the share of the best trials to narrow around, in (0, 1].
      progress: show a progress bar.
      model: ``model(**structure) -> (apply_fn, params)``: the model of a
        structural bucket, given the space's structural names (searched or
        fixed) as keywords (``model(width=64, depth=2, activation="tanh")``;
        :func:`hamjax.tune.models.reference`), built once per combination so
        trials of one structure train together; needed for a space with
        width, depth or activation, refused when it takes no keyword for one.

    Returns:
      A :class:`hamjax.tune.TuneResult`.

    Raises:
      ValueError: bad arguments (before any training), or a stored study
        whose directions, objectives, space or execution differ.

    Examples:
      >>> import jax, hamjax
      >>> ds = hamjax.data.load("digits")
      >>> f = lambda p, x: x.reshape(x.shape[0], -1) @ p["w"]
      >>> init = lambda key: {"w": 0.01 * jax.random.normal(key, (64, 10))}
      >>> space = {"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}, "batch_size": 64}
      >>> result = run(f, init, ds, space, trials=8, batch=4, epochs=2, execution="vmap", progress=False)
      >>> len(result.study.trials), result.member_epochs, result.best_values["accuracy"] > 0.5
      (8, 16, True)
    """
    where = "tune"
    started = time.perf_counter()
    space = space if isinstance(space, Space) else Space(space)
    trials = check_int(where, "trials", trials, minimum=1)
    batch = check_int(where, "batch", batch, minimum=1, maximum=trials)
    epochs = check_int(where, "epochs", epochs, minimum=1)
    seed = check_int(where, "seed", seed, minimum=0)
    if execution is not None:
        check_choice(where, "execution", execution, EXECUTIONS)
    objectives = check_objectives(where, objectives)
    if patience is not None:
        patience = check_int(where, "patience", patience, minimum=1)
    min_delta = check_number(where, "min_delta", min_delta, minimum=0)
    if narrow_after is not None:
        narrow_after = check_int(where, "narrow_after", narrow_after, minimum=2)
    narrow_quantile = check_number(
        where, "narrow_quantile", narrow_quantile, minimum=0, maximum=1, exclusive_minimum=True
    )
    check_dataset(where, "dataset", dataset)
    check_builder(where, model, [n for n in STRUCTURAL if n in {*space.names, *space.fixed}])
    if model is None and not (callable(params) or jax.tree.leaves(params)):
        raise ValueError(f"{where}: params must be a params tree or init(key) -> params, got {params!r}")
    distilling = sorted({"temperature", "alpha"} & {*space.names, *space.fixed})
    if distilling and teacher is None:
        raise ValueError(f"{where}: {distilling} need teacher=(teacher_apply_fn, teacher_params)")
    if sampler == "grid":  # a spent grid ends the study
        trials = min(trials, grid_size(space))
    optuna_sampler = make_sampler(sampler, seed=seed, space=space, batch=batch, objectives=objectives)
    optuna_pruner = make_pruner(pruner, epochs=epochs)
    pruning = type(optuna_pruner).__name__ != "NopPruner"
    if pruning and len(objectives) > 1:
        raise ValueError(f"{where}: pruner {pruner!r} needs one objective (Optuna prunes single-objective studies)")
    study = studies.open_study(
        objectives, storage=storage, study_name=study_name, sampler=optuna_sampler, pruner=optuna_pruner, space=space
    )
    execution = studies.recorded_execution(study, execution)
    models = Models(apply_fn, params, build=model, execution=execution, teacher=teacher)
    studies.warm_start(study, space, enqueue, count=batch)
    loop = _Loop(models, dataset, space, study, batch=batch, epochs=epochs, seed=seed, objectives=objectives)
    loop.best = _best_accuracy(study)  # a resumed study's convergence watch starts from its best so far
    bar = _Progress(progress, trials, studies.counted_trials(study))
    stopped, round_ = "budget", 0
    recorded = studies.EXECUTION_ATTR in study.user_attrs
    try:
        while True:
            counted = studies.counted_trials(study)  # other workers' trials too: the budget is the study's
            bar.update(counted, loop.best)
            remaining = trials - counted - loop.live
            if narrow_after is not None and not loop.narrowed:
                narrowed = studies.narrow(study, space, after=narrow_after, quantile=narrow_quantile)
                if narrowed is not None:
                    loop.narrowed, loop.distributions = True, narrowed.distributions()
            if patience is not None and loop.since_best >= patience:
                stopped, remaining = "converged", 0
            asked = loop.ask(min(batch - loop.live, max(remaining, 0)))
            if asked:
                loop.place(asked)
            if not loop.live:
                break
            span = loop.round(round_, pruning=pruning, min_delta=min_delta)
            models.fix()
            if not recorded:
                study.set_user_attr(studies.EXECUTION_ATTR, models.execution)
                recorded = True
            round_ += span
    except BaseException:
        loop.abandon()  # no trial stays RUNNING: FAIL (not counted) so that a resumed study retries it
        raise
    finally:
        bar.close()
    return TuneResult(
        study=study,
        space=space,
        objectives=objectives,
        epochs=epochs,
        execution=models.execution,
        trials_run=loop.finished,
        member_epochs=loop.member_epochs,
        stopped=stopped,
        seconds=time.perf_counter() - started,
    )


def _best_accuracy(study) -> float:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max((t.values[0] for t in done), default=-math.inf)


class _Progress:
    def __init__(self, enabled: bool, total: int, start: int):
        self._bar: Any = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("tune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), transient=True,
        )  # fmt: skip
        self._task = self._bar.add_task("tune", total=total, completed=start, info="")
        self._bar.start()

    def update(self, completed: int, best: float) -> None:
        if self._bar is not None:
            info = f"best val acc {best:.4f}" if math.isfinite(best) else ""
            self._bar.update(self._task, completed=completed, info=info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


tune: Callable[..., TuneResult] = run
