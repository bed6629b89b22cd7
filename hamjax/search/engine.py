"""Architecture search runs: random, regularized evolution or Bayesian (Optuna), one generation per compiled call.

Every generation proposes ``population_size`` genomes of :func:`hamjax.search.nas.space`,
trains all of them at once as masked sub-networks of their own supernets
(:class:`hamjax.search.population.Population`), scores them on validation
data (a diverged member scores ``-inf``) and appends them to the history.

A candidate is scored on ``SearchConfig.objectives`` (:data:`OBJECTIVES`):
validation accuracy (maximised, always one of them), parameters of the
materialised model and its batch-1 latency (both minimised). When latency is
an objective, every candidate's materialised network is timed during its
generation, once per distinct architecture in the run, and the measurement
is kept in the history (so checkpointed, and never taken again on resume);
otherwise only the members of the final Pareto front are timed.

* ``"random"``: genomes drawn uniformly from the space.
* ``"evolution"``: regularized evolution (Real et al. 2019): the population is
  the last ``population_size`` candidates; each child is a mutated copy of
  the winner of a tournament of ``sample_size``; the oldest leave. With
  ``selection="accuracy"`` (the default) the most accurate contestant wins;
  with ``selection="pareto"`` the one of lowest non-dominated rank in the
  population under all objectives (:func:`nondominated_rank`), then the
  most accurate, then the oldest (:func:`tournament_fitness`).
* ``"bayesian"``: an Optuna sampler (``SearchConfig.sampler``: TPE or GP),
  rebuilt each generation from the whole history, asks for a batch of
  ``population_size`` trials; with ``selection="pareto"`` its study is
  multi-objective over the objectives.

Each generation depends only on the history and ``(seed, generation)``,
and the history is checkpointed with orbax every ``checkpoint_every``
generations, so a run killed at any point and resumed from its ``workdir``
ends with the same result as one that never stopped. (With latency an
objective, only up to timing noise: the candidates after the interruption
are timed again, and under ``selection="pareto"`` or a Bayesian search the
measurements steer what comes next.) The result holds the history, the
best candidate and the Pareto front over the objectives
(:func:`pareto_front`), each front member with its batch-1 latency measured.
"""

from __future__ import annotations

import dataclasses
import importlib.util
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
from hamjax.search.pareto import nondominated_rank, pareto_front

STRATEGIES = ("random", "evolution", "bayesian")
OBJECTIVES = ("accuracy", "params", "latency")
SELECTIONS = ("accuracy", "pareto")
SAMPLERS = ("tpe", "gp")
# Fields added after checkpoints were first written: left out of the checkpoint
# fingerprint at their defaults, so those checkpoints still resume.
_LATER_FIELDS = ("objectives", "selection", "sampler")


def check_objectives(objectives: str | Sequence[str]) -> tuple[str, ...]:
    """The search objectives as a tuple in :data:`OBJECTIVES` order.

    Args:
      objectives: names from :data:`OBJECTIVES`, as a sequence or one
        comma-separated string; ``"accuracy"`` must be one of them.

    Returns:
      The names, each once, in :data:`OBJECTIVES` order.

    Raises:
      ValueError: an unknown name, a repeated one, or no ``"accuracy"``.

    Examples:
      >>> check_objectives("latency,accuracy")
      ('accuracy', 'latency')
    """
    if isinstance(objectives, str):
        objectives = [name.strip() for name in objectives.split(",")]
    try:
        names = tuple(objectives)
    except TypeError:
        raise ValueError(f"objectives must be a sequence of names from {OBJECTIVES}, got {objectives!r}") from None
    for name in names:
        if name not in OBJECTIVES:
            raise ValueError(f"objective {name!r} is not one of {OBJECTIVES}")
    repeated = sorted({name for name in names if names.count(name) > 1}, key=OBJECTIVES.index)
    if repeated:
        raise ValueError(f"objectives name {', '.join(map(repr, repeated))} more than once: {names}")
    if "accuracy" not in names:
        raise ValueError(f"objectives must include 'accuracy', got {names}")
    return tuple(name for name in OBJECTIVES if name in names)


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
      objectives: what a candidate is scored on, from :data:`OBJECTIVES`
        (a list or a comma-separated string is normalised by
        :func:`check_objectives`): the Pareto front is over these, and
        ``"latency"`` makes every candidate's latency measured during its
        generation.
      selection: ``"accuracy"`` (the default, and the selection of runs from
        before multi-objective search, whose checkpoints stay valid): the
        evolution tournament and the Bayesian study look at accuracy alone,
        whatever the objectives. ``"pareto"``: the tournament winner is the
        contestant of lowest non-dominated rank under the objectives, then
        the most accurate, then the oldest, and the Bayesian study is
        multi-objective. ``selection="pareto"`` with
        ``objectives=("accuracy",)`` picks exactly as ``"accuracy"`` does.
        Ignored by ``"random"``.
      sampler: the Optuna sampler of ``"bayesian"``, one of :data:`SAMPLERS`:
        ``"tpe"`` (``TPESampler``) or ``"gp"`` (``GPSampler``, which needs
        ``torch`` and ``scipy``); ignored by the other strategies.

    Raises:
      ValueError: a field out of its range, naming it; ``sampler="gp"`` for a
        Bayesian search where ``torch`` or ``scipy`` is not installed.
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
    objectives: tuple[str, ...] = ("accuracy", "params")
    selection: str = "accuracy"
    sampler: str = "tpe"

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
        try:
            object.__setattr__(self, "objectives", check_objectives(self.objectives))
        except ValueError as err:
            raise ValueError(f"SearchConfig: {err}") from None
        if self.selection not in SELECTIONS:
            raise ValueError(f"SearchConfig: selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"SearchConfig: sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sampler == "gp" and self.strategy == "bayesian":
            missing = [name for name in ("torch", "scipy") if importlib.util.find_spec(name) is None]
            if missing:
                raise ValueError(
                    f"SearchConfig: sampler='gp' (optuna's GPSampler) needs {' and '.join(missing)}, which is not "
                    "installed; install it or use sampler='tpe'"
                )


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchConfig)}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One trained architecture: its genes, score and size.

    ``latency_ms`` is the batch-1 p50 latency of the materialised network:
    measured for every candidate when latency is an objective, else ``None``
    in the history and measured for the members of the Pareto front.
    """

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


def _objective_values(candidate: Candidate, objectives: Sequence[str]) -> list[float]:
    """The candidate's value of each objective (accuracy, params, latency in ms)."""
    table = {"accuracy": candidate.accuracy, "params": candidate.params, "latency": candidate.latency_ms}
    return [table[name] for name in objectives]


def _columns(candidates: Sequence[Candidate], objectives: Sequence[str]) -> list[list[float]]:
    """One list per objective: its values over the candidates."""
    rows = [_objective_values(c, objectives) for c in candidates]
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in objectives]


def tournament_fitness(candidates: Sequence[Candidate], config: SearchConfig) -> np.ndarray:
    """The fitness the evolution tournament compares (higher wins): accuracy, or a Pareto order.

    With ``config.selection == "accuracy"`` it is the accuracies. With
    ``"pareto"`` it is ``N - 1`` minus each candidate's position in the order (lowest
    :func:`nondominated_rank` under ``config.objectives``, then highest
    accuracy, then oldest, i.e. earliest in ``candidates``), so a tournament
    picks the contestant first in that order. A diverged candidate (accuracy
    ``-inf`` or NaN) comes last either way. Under ``objectives=("accuracy",)``
    the ranks follow accuracy, so both give the same order and the same picks.

    Args:
      candidates: the population, oldest first.
      config: the :class:`SearchConfig`.

    Returns:
      ``(len(candidates),)`` float32 fitness.

    Examples:
      >>> alive = [Candidate(0, {}, acc, size, "") for acc, size in [(0.9, 1000), (0.9, 100), (0.5, 50)]]
      >>> tournament_fitness(alive, SearchConfig(selection="pareto")).tolist()
      [0.0, 2.0, 1.0]
    """
    acc = np.asarray([c.accuracy for c in candidates], np.float32)
    if config.selection == "accuracy":
        return acc
    acc = np.where(np.isnan(acc), -np.inf, acc).astype(np.float64)
    costs = _columns(candidates, config.objectives)[1:]
    rank = nondominated_rank(acc, *costs)
    order = np.lexsort((np.arange(len(candidates)), -acc, rank))
    position = np.empty(len(candidates), np.float32)
    position[order] = np.arange(len(candidates))
    return len(candidates) - 1 - position


def _genome_batch(space: evolution.Space, members: Sequence[dict]) -> dict:
    rows = [space.encode(m) for m in members]
    return {name: jnp.concatenate([r[name] for r in rows]) for name in space.names}


def _sampler(config: SearchConfig, generation: int):
    import optuna

    seed = config.seed * 100_003 + generation
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.population_size)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.population_size)


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
    sampler = _sampler(config, generation)
    multi = config.selection == "pareto"
    if multi:
        directions = ["maximize"] + ["minimize"] * (len(config.objectives) - 1)
        study = optuna.create_study(directions=directions, sampler=sampler)
        # A diverged candidate is told accuracy 0 and the worst costs of the
        # history, so every candidate with some accuracy dominates it.
        worst = [max(column) for column in _columns(history, config.objectives)[1:]]
    else:
        study = optuna.create_study(direction="maximize", sampler=sampler)
    for c in history:
        encoded = space.encode(c.genome)
        params = {
            n: int(encoded[n][0]) if not isinstance(genes[n], evolution.Float) else float(encoded[n][0]) for n in genes
        }
        finite = bool(np.isfinite(c.accuracy))
        value = c.accuracy if finite else 0.0
        if multi:
            costs = _objective_values(c, config.objectives)[1:] if finite else worst
            trial = optuna.trial.create_trial(params=params, distributions=dists, values=[value, *costs])
        else:
            trial = optuna.trial.create_trial(params=params, distributions=dists, value=value)
        study.add_trial(trial)
    trials = [study.ask(dists) for _ in range(config.population_size)]
    dtypes = {n: jnp.float32 if isinstance(g, evolution.Float) else jnp.int32 for n, g in genes.items()}
    return {n: jnp.asarray([t.params[n] for t in trials], dtypes[n]) for n in genes}


def propose(space: evolution.Space, history: list[Candidate], config: SearchConfig, generation: int) -> dict:
    """The genome batch of ``generation`` (a function of the history, the seed and the generation only).

    Args:
      space: the search space (:func:`hamjax.search.nas.space`).
      history: every candidate so far, oldest first, with ``latency_ms`` set
        when latency is an objective.
      config: the :class:`SearchConfig`.
      generation: the generation to propose.

    Returns:
      A batch of ``config.population_size`` genomes of ``space``.
    """
    key = jax.random.fold_in(jax.random.key(config.seed), generation)
    if config.strategy == "random" or not history:
        return space.sample(key, config.population_size)
    if config.strategy == "bayesian":
        return _propose_bayesian(space, history, config, generation)
    alive = history[-config.population_size :]
    fitness = jnp.asarray(tournament_fitness(alive, config), jnp.float32)
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
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "search"), every=config.checkpoint_every) if workdir else None
    if ckpt is not None:
        restored = ckpt.restore_latest({"generation": np.zeros((), np.int32)})
        if restored is not None:
            step, _, meta = restored
            if meta.get("fingerprint") != fingerprint:
                differences = _differences(meta.get("fingerprint") or {}, fingerprint)
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
    accuracy, *costs = _columns(history, objectives)
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
