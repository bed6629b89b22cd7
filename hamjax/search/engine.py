"""Architecture search runs: random, regularized evolution or Bayesian (Optuna TPE), one generation per compiled call.

Every generation proposes ``population_size`` genomes of :func:`hamjax.search.nas.space`,
trains all of them at once as masked sub-networks of their own supernets
(:class:`hamjax.search.population.Population`), scores them on validation
data (a diverged member scores ``-inf``) and appends them to the history.

* ``"random"``: genomes drawn uniformly from the space.
* ``"evolution"``: regularized evolution (Real et al. 2019): the population is
  the last ``population_size`` candidates; each child is a mutated copy of
  the winner of a tournament of ``sample_size``; the oldest leave.
* ``"bayesian"``: an Optuna TPE sampler, rebuilt each generation from the
  whole history, asks for a batch of ``population_size`` trials.

Each generation depends only on the history and ``(seed, generation)``,
and the history is checkpointed with orbax every ``checkpoint_every``
generations, so a run killed at any point and resumed from its ``workdir``
ends with the same result as one that never stopped. The result holds the
history, the best candidate and the Pareto front over (validation
accuracy, parameters of the materialised model), with the batch-1 latency
of each front member measured.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax import checkpoint, measure
from hamjax import data as data_lib
from hamjax.search import evolution, nas, selection
from hamjax.search import population as population_lib

STRATEGIES = ("random", "evolution", "bayesian")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How a search runs.

    Attributes:
      strategy: one of :data:`STRATEGIES`.
      generations: generations to run.
      population_size: candidates trained together per generation.
      steps: optimizer steps per candidate.
      batch_size: training batch size.
      learning_rate: Adam learning rate of every candidate.
      sample_size: tournament size of regularized evolution.
      mutation_rate: per-gene mutation probability.
      eval_rows: validation rows that score a candidate.
      execution: how the member axis runs (see :data:`hamjax.search.population.EXECUTIONS`).
      checkpoint_every: generations between checkpoints.
      seed: the run's seed.
    """

    strategy: str = "evolution"
    generations: int = 20
    population_size: int = 32
    steps: int = 100
    batch_size: int = 128
    learning_rate: float = 3e-3
    sample_size: int = 8
    mutation_rate: float = 0.3
    eval_rows: int = 500
    execution: str = "vmap"
    checkpoint_every: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"SearchConfig: strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("generations", "population_size", "steps", "batch_size", "eval_rows", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                what = "population size" if name == "population_size" else name
                raise ValueError(f"SearchConfig: {what} must be an integer >= 1, got {value!r}")
        if not 1 <= self.sample_size <= self.population_size:
            raise ValueError(
                f"SearchConfig: tournament size sample_size={self.sample_size} must be in [1, population_size="
                f"{self.population_size}]"
            )
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"SearchConfig: learning_rate must be finite and > 0, got {self.learning_rate}")
        if not 0.0 <= self.mutation_rate <= 1.0:
            raise ValueError(f"SearchConfig: mutation_rate must be in [0, 1], got {self.mutation_rate}")
        if self.execution not in population_lib.EXECUTIONS:
            raise ValueError(f"SearchConfig: execution must be one of {population_lib.EXECUTIONS}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One trained architecture: its genes, score and size."""

    generation: int
    genome: dict
    accuracy: float
    params: int
    description: str
    latency_ms: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A finished search: every candidate, the best one and the Pareto front."""

    history: tuple[Candidate, ...]
    best: Candidate
    pareto: tuple[Candidate, ...]
    resumed_from: int | None = None

    def to_dict(self) -> dict:
        return {
            "history": [c.to_dict() for c in self.history],
            "best": self.best.to_dict(),
            "pareto": [c.to_dict() for c in self.pareto],
        }


def pareto_front(accuracy: Sequence[float], params: Sequence[int]) -> list[int]:
    """Indices of the candidates no other beats on both accuracy (higher) and params (lower), by params.

    Non-finite accuracies are never on the front; among exact duplicates the first is kept.
    """
    acc, size = np.asarray(accuracy, np.float64), np.asarray(params, np.float64)
    if acc.shape != size.shape or acc.ndim != 1:
        raise ValueError(f"pareto_front: accuracy and params must be 1-D of one length, got {acc.shape}, {size.shape}")
    front = []
    for i in np.argsort(size, kind="stable"):
        if not np.isfinite(acc[i]):
            continue
        if all(acc[i] > acc[j] for j in front if size[j] <= size[i]):
            front.append(int(i))
    return front


def _genome_batch(space: evolution.Space, members: Sequence[dict]) -> dict:
    rows = [space.encode(m) for m in members]
    return {name: jnp.concatenate([r[name] for r in rows]) for name in space.names}


def _propose_bayesian(space: evolution.Space, history: list[Candidate], config: SearchConfig, generation: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    genes = space.genes
    dists = {}
    for name, gene in genes.items():
        if isinstance(gene, evolution.Int):
            dists[name] = optuna.distributions.IntDistribution(gene.low, gene.high)
        elif isinstance(gene, evolution.Float):
            dists[name] = optuna.distributions.FloatDistribution(gene.low, gene.high, log=gene.log)
        else:
            dists[name] = optuna.distributions.CategoricalDistribution(list(range(len(gene.options))))
    sampler = optuna.samplers.TPESampler(
        seed=config.seed * 100_003 + generation, n_startup_trials=config.population_size
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for c in history:
        encoded = space.encode(c.genome)
        params = {
            n: int(encoded[n][0]) if not isinstance(genes[n], evolution.Float) else float(encoded[n][0]) for n in genes
        }
        value = c.accuracy if np.isfinite(c.accuracy) else 0.0
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    trials = [study.ask(dists) for _ in range(config.population_size)]
    dtypes = {n: jnp.float32 if isinstance(g, evolution.Float) else jnp.int32 for n, g in genes.items()}
    return {n: jnp.asarray([t.params[n] for t in trials], dtypes[n]) for n in genes}


def propose(space: evolution.Space, history: list[Candidate], config: SearchConfig, generation: int) -> dict:
    """The genome batch of ``generation`` (a function of the history, the seed and the generation only)."""
    key = jax.random.fold_in(jax.random.key(config.seed), generation)
    if config.strategy == "random" or not history:
        return space.sample(key, config.population_size)
    if config.strategy == "bayesian":
        return _propose_bayesian(space, history, config, generation)
    alive = history[-config.population_size :]
    fitness = jnp.asarray([c.accuracy for c in alive], jnp.float32)
    k_select, k_mutate = jax.random.split(key)
    parents = selection.tournament(k_select, fitness, config.population_size, k=min(config.sample_size, len(alive)))
    batch = _genome_batch(space, [alive[int(i)].genome for i in np.asarray(parents)])
    return evolution.mutate(k_mutate, space, batch, rate=config.mutation_rate)


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
      ValueError: data that does not fit the supernet, or a checkpoint of another search.
    """
    if tuple(dataset.input_shape) != tuple(supernet.input_shape) or dataset.num_classes != supernet.num_classes:
        raise ValueError(
            f"search: the supernet takes {supernet.input_shape} -> {supernet.num_classes} classes, the data is "
            f"{tuple(dataset.input_shape)} -> {dataset.num_classes}"
        )
    space = nas.space(supernet)
    fingerprint = json_safe({"config": dataclasses.asdict(config), "supernet": repr(supernet)})
    history: list[Candidate] = []
    start, resumed = 0, None
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "search"), every=config.checkpoint_every) if workdir else None
    if ckpt is not None:
        restored = ckpt.restore_latest({"generation": np.zeros((), np.int32)})
        if restored is not None:
            step, _, meta = restored
            if meta.get("fingerprint") != fingerprint:
                raise ValueError(f"search: {ckpt.directory} holds a checkpoint of another search; use a new workdir")
            history = [Candidate(**c) for c in meta["history"]]
            start, resumed = step + 1, step
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
                new.append(
                    Candidate(
                        generation, values, float(fitness[i]), nas.param_count(supernet, values), nas.describe(values)
                    )
                )
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
    return _result(supernet, dataset, history, resumed)


def _result(supernet, dataset, history: list[Candidate], resumed) -> SearchResult:
    best = max(history, key=lambda c: (c.accuracy, -c.params))
    front = pareto_front([c.accuracy for c in history], [c.params for c in history])
    example = dataset.test.x[:1]
    pareto = []
    params = nas.init(supernet, jax.random.key(0))  # latency depends on shapes, not on trained values
    for i in front:
        c = history[i]
        apply_fn, small = nas.materialise(supernet, params, c.genome)
        ms = measure.latency(measure.JaxRunner(apply_fn, small), example, warmup=3, runs=20).p50_ms
        pareto.append(dataclasses.replace(c, latency_ms=round(float(ms), 4)))
    return SearchResult(tuple(history), best, tuple(pareto), resumed)


def json_safe(value):
    """``value`` as it comes back from JSON (tuples become lists)."""
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
