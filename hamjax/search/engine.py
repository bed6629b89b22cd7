"""Architecture search runs: random, regularized evolution or Bayesian (Optuna), one generation per compiled call.

Every generation proposes ``population_size`` genomes of :func:`hamjax.search.nas.space`
(:func:`propose`, by the config's ``method``), trains all of them at once as
masked sub-networks of their own supernets
(:class:`hamjax.search.population.Population`), scores them on validation
data (a diverged member scores ``-inf``) and appends them to the history.

A candidate is scored on ``SearchConfig.objectives`` (:data:`OBJECTIVES`):
validation accuracy (maximised, always one of them), parameters of the
materialised model and its batch-1 latency (both minimised). When latency is
an objective, every candidate's materialised network is timed during its
generation, once per distinct architecture in the run, and the measurement
is kept in the history (so checkpointed, and never taken again on resume);
otherwise only the members of the final Pareto front are timed.

Each generation depends only on the history and ``(seed, generation)``,
and the history is checkpointed with orbax every ``checkpoint_every``
generations, so a run killed at any point and resumed from its ``workdir``
ends with the same result as one that never stopped. (With latency an
objective, only up to timing noise: the candidates after the interruption
are timed again, and under ``selection="pareto"`` or a Bayesian search the
measurements steer what comes next.) The result holds the history, the
best candidate and the Pareto front over the objectives
(:func:`pareto_front`), each front member with its batch-1 latency measured.

The config, the candidates and the three methods are defined in
:mod:`hamjax.search.proposals` and re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from hamjax import checkpoint, measure
from hamjax import data as data_lib
from hamjax.search import nas
from hamjax.search import population as population_lib
from hamjax.search.pareto import pareto_front
from hamjax.search.proposals import (
    METHODS,
    OBJECTIVES,
    SAMPLERS,
    SELECTIONS,
    Candidate,
    SearchConfig,
    check_objectives,
    objective_columns,
    propose,
    tournament_fitness,
)

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "SAMPLERS",
    "SELECTIONS",
    "Candidate",
    "SearchConfig",
    "SearchResult",
    "check_objectives",
    "evaluate_generation",
    "json_safe",
    "propose",
    "run",
    "tournament_fitness",
]

# Fields added after checkpoints were first written: left out of the checkpoint
# fingerprint at their defaults, so those checkpoints still resume.
_LATER_FIELDS = ("objectives", "selection", "sampler")
# Fields renamed since checkpoints were first written: old name -> new name, applied to a saved fingerprint.
_RENAMED_FIELDS = {"strategy": "method"}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchConfig)}


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A finished search: every candidate, the best one and the Pareto front.

    Attributes:
      history: every candidate, oldest first.
      best: the most accurate candidate (the smaller one on a tie).
      pareto: the Pareto front over the objectives, each with its latency measured.
      resumed_from: the checkpointed generation this run resumed after, or ``None``.

    Examples:
      >>> c = Candidate(0, {}, 0.9, 100, "")
      >>> sorted(SearchResult((c,), c, (c,)).to_dict())
      ['best', 'history', 'pareto']
    """

    history: tuple[Candidate, ...]
    best: Candidate
    pareto: tuple[Candidate, ...]
    resumed_from: int | None = None

    def to_dict(self) -> dict:
        """History, best and Pareto front as JSON-ready dicts (``resumed_from`` is left out)."""
        return {
            "history": [c.to_dict() for c in self.history],
            "best": self.best.to_dict(),
            "pareto": [c.to_dict() for c in self.pareto],
        }


def evaluate_generation(
    supernet: nas.SupernetConfig, dataset, config: SearchConfig, genomes: dict, generation: int, *, trainer=None
):
    """Train the genome batch together and return validation accuracies (``-inf`` for diverged members).

    Pass the same ``trainer`` (a :class:`~hamjax.search.population.Population` of
    ``nas.member_apply(supernet)``) every generation to compile once.
    """
    key = jax.random.fold_in(jax.random.key(config.seed + 1), generation)
    params = nas.population_params(supernet, key, genomes)
    if trainer is None:
        trainer = population_lib.Population(nas.member_apply(supernet), execution=config.execution)
    state = trainer.init(params, {"learning_rate": config.learning_rate})
    train = dataset.train
    batch_size = min(config.batch_size, len(train.y))
    start = generation * config.steps
    batches = [data_lib.batch_at(train, batch_size, start + s, seed=config.seed) for s in range(config.steps)]
    xs, ys = np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
    state, _ = trainer.train(state, xs, ys)
    rows = min(config.eval_rows, len(dataset.val.y))
    scores = trainer.evaluate(state, dataset.val.x[:rows], dataset.val.y[:rows])["accuracy"]
    return np.asarray(population_lib.fitness(state.params, scores)), state


def run(
    supernet: nas.SupernetConfig,
    dataset,
    config: SearchConfig,
    *,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
    on_generation: Callable[[int, list[Candidate]], Any] | None = None,
) -> SearchResult:
    """Run (or resume, from ``workdir``) an architecture search.

    Args:
      supernet: the search's :class:`~hamjax.search.nas.SupernetConfig`
        (its ``input_shape`` and ``num_classes`` must match the data).
      dataset: a :class:`hamjax.data.Dataset`.
      config: the :class:`SearchConfig`.
      workdir: checkpoints go to ``workdir/search``; an existing one is resumed.
      progress: a progress bar per generation.
      on_generation: called with ``(generation, new candidates)`` after each.

    Returns:
      The :class:`SearchResult`.

    Raises:
      ValueError: data that does not fit the supernet, or a checkpoint of
        another search (another supernet or any other config field,
        objectives, selection and sampler included; the message names them).
    """
    if tuple(dataset.input_shape) != tuple(supernet.input_shape) or dataset.num_classes != supernet.num_classes:
        raise ValueError(
            f"search: the supernet takes {supernet.input_shape} -> {supernet.num_classes} classes, the data is "
            f"{tuple(dataset.input_shape)} -> {dataset.num_classes}"
        )
    space = nas.space(supernet)
    fingerprint = _fingerprint(supernet, config)
    history: list[Candidate] = []
    start, resumed = 0, None
    ckpt = None
    if workdir:
        folder = checkpoint.check_inside("search", "the search checkpoints", workdir, os.path.join(workdir, "search"))
        ckpt = checkpoint.Checkpointer(folder, every=config.checkpoint_every)
    if ckpt is not None:
        restored = ckpt.restore_latest({"generation": np.zeros((), np.int32)})
        if restored is not None:
            step, _, meta = restored
            saved = _upgrade(meta.get("fingerprint") or {})
            if saved != fingerprint:
                differences = _differences(saved, fingerprint)
                raise ValueError(
                    f"search: {ckpt.directory} holds a checkpoint of another search ({differences}); use a new workdir"
                )
            history = [Candidate(**c) for c in meta["history"]]
            start, resumed = step + 1, step
    example = dataset.test.x[:1]
    # Resumed candidates keep their measurements: an architecture is timed once per run.
    latency_ms = _latency_meter(supernet, example, history) if "latency" in config.objectives else None
    bar = _progress(progress, config.generations, start)
    trainer = population_lib.Population(nas.member_apply(supernet), execution=config.execution)
    try:
        for generation in range(start, config.generations):
            genomes = propose(space, history, config, generation)
            space.validate(genomes)
            fitness, _ = evaluate_generation(supernet, dataset, config, genomes, generation, trainer=trainer)
            new = []
            for i in range(config.population_size):
                values = nas.decode(supernet, {n: genomes[n][i] for n in space.names})
                ms = None if latency_ms is None else latency_ms(values)
                size = nas.param_count(supernet, values)
                new.append(Candidate(generation, values, float(fitness[i]), size, nas.describe(values), ms))
            history += new
            if ckpt is not None and (
                (generation + 1) % config.checkpoint_every == 0 or generation + 1 == config.generations
            ):
                meta = {"fingerprint": fingerprint, "history": [c.to_dict() for c in history]}
                ckpt.save(generation, {"generation": np.asarray(generation, np.int32)}, meta)
            if on_generation is not None:
                on_generation(generation, new)
            if bar is not None:
                best = max(c.accuracy for c in history)
                bar.update(bar.task, advance=1, description=f"generation {generation + 1}: best {best:.4f}")
    finally:
        if bar is not None:
            bar.stop()
        if ckpt is not None:
            ckpt.close()
    if not history:
        raise ValueError("search: no generations ran")
    return _result(history, resumed, config.objectives, latency_ms or _latency_meter(supernet, example))


def _architecture(values: dict) -> tuple:
    """What :func:`hamjax.search.nas.materialise` builds: (op, width, activation) of each active non-identity layer."""
    layers = range(values["depth"])
    return tuple(
        (values[f"op{i}"], values[f"width{i}"], values[f"act{i}"]) for i in layers if values[f"op{i}"] != "identity"
    )


def _latency_meter(supernet: nas.SupernetConfig, example: np.ndarray, known: Sequence[Candidate] = ()):
    """A function from decoded genome values to the batch-1 p50 latency (ms) of the materialised network.

    Each distinct architecture (:func:`_architecture`) is measured once; the
    ``latency_ms`` of the ``known`` candidates are taken as measured.
    """
    cache = {_architecture(c.genome): c.latency_ms for c in known if c.latency_ms is not None}
    params = nas.init(supernet, jax.random.key(0))  # latency depends on shapes, not on trained values

    def latency_ms(values: dict) -> float:
        key = _architecture(values)
        if key not in cache:
            apply_fn, small = nas.materialise(supernet, params, values)
            ms = measure.latency(measure.JaxRunner(apply_fn, small), example, warmup=3, runs=20).p50_ms
            cache[key] = round(float(ms), 4)
        return cache[key]

    return latency_ms


def _result(history: list[Candidate], resumed, objectives: Sequence[str], latency_ms) -> SearchResult:
    best = max(history, key=lambda c: (c.accuracy, -c.params))
    accuracy, *costs = objective_columns(history, objectives)
    pareto = [history[i] for i in pareto_front(accuracy, *costs)]
    if "latency" not in objectives:
        pareto = [dataclasses.replace(c, latency_ms=latency_ms(c.genome)) for c in pareto]
    return SearchResult(tuple(history), best, tuple(pareto), resumed)


def _fingerprint(supernet: nas.SupernetConfig, config: SearchConfig) -> dict:
    """What a checkpoint must match to be resumed: the supernet and the config (as JSON)."""
    fields = dataclasses.asdict(config)
    for name in _LATER_FIELDS:
        if fields[name] == _DEFAULTS[name]:
            del fields[name]
    return json_safe({"config": fields, "supernet": repr(supernet)})


def _upgrade(saved: dict) -> dict:
    """A saved fingerprint with its renamed fields under their current names."""
    fields = saved.get("config")
    if not isinstance(fields, dict) or not set(fields) & set(_RENAMED_FIELDS):
        return saved
    return {**saved, "config": {_RENAMED_FIELDS.get(name, name): value for name, value in fields.items()}}


def _differences(saved: dict, current: dict) -> str:
    """The fields in which two fingerprints differ, for an error message."""
    defaults = json_safe({name: _DEFAULTS[name] for name in _LATER_FIELDS})
    there, here = saved.get("config") or {}, current["config"]
    parts = []
    fields = list(_DEFAULTS)
    for name in sorted(set(here) | set(there), key=lambda n: fields.index(n) if n in fields else len(fields)):
        a, b = there.get(name, defaults.get(name)), here.get(name, defaults.get(name))
        if a != b:
            parts.append(f"{name}: {a!r} there, {b!r} here")
    if saved.get("supernet") != current["supernet"]:
        parts.append("another supernet")
    return "; ".join(parts) or "another format"


def json_safe(value):
    """``value`` as it comes back from JSON (tuples become lists).

    Args:
      value: anything ``json.dumps`` accepts.

    Returns:
      ``json.loads(json.dumps(value))``.

    Examples:
      >>> json_safe({"widths": (8, 16)})
      {'widths': [8, 16]}
    """
    import json

    return json.loads(json.dumps(value))


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.task = bar.add_task("search", total=total, completed=done)
    bar.start()
    return bar
