"""What a search is and how each generation is proposed: the config, candidates, objectives, and the three methods.

:class:`SearchConfig` says how a search runs and :class:`Candidate` is one
trained architecture with its scores. :func:`propose` draws a generation's
genomes from the history, the seed and the generation number alone, by one
of :data:`METHODS`:

* ``"random"``: genomes drawn uniformly from the space.
* ``"evolution"``: regularized evolution (Real et al. 2019): the population is
  the last ``population_size`` candidates; each child is a mutated copy of
  the winner of a tournament of ``sample_size``; the oldest leave. With
  ``selection="accuracy"`` (the default) the most accurate contestant wins;
  with ``selection="pareto"`` the one of lowest non-dominated rank in the
  population under all objectives, then the most accurate, then the oldest
  (:func:`tournament_fitness`).
* ``"bayesian"``: an Optuna sampler (``SearchConfig.sampler``: TPE or GP),
  rebuilt each generation from the whole history, asks for a batch of
  ``population_size`` trials; with ``selection="pareto"`` its study is
  multi-objective over the objectives.

:mod:`hamjax.search.engine` runs the generations and re-exports every name here.

References:
  Real et al., "Regularized Evolution for Image Classifier Architecture
  Search", AAAI 2019.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_choice, check_int, check_number, check_positive
from hamjax.search import evolution, selection
from hamjax.search.pareto import nondominated_rank
from hamjax.search.space import Float, Int, Space
from hamjax.search.trainer import EXECUTIONS

METHODS = ("random", "evolution", "bayesian")
OBJECTIVES = ("accuracy", "params", "latency")
SELECTIONS = ("accuracy", "pareto")
SAMPLERS = ("tpe", "gp")


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
      method: the search method, one of :data:`METHODS`.
      generations: generations to run.
      population_size: candidates trained together per generation.
      steps: optimizer steps per candidate.
      batch_size: training batch size.
      learning_rate: Adam learning rate of every candidate.
      sample_size: tournament size of regularized evolution, at most ``population_size``.
      mutation_rate: per-gene mutation probability.
      eval_rows: validation rows that score a candidate.
      execution: how the member axis runs (see :data:`hamjax.search.trainer.EXECUTIONS`).
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
        ``torch`` and ``scipy``); ignored by the other methods.

    Raises:
      ValueError: a field out of its range, naming it; ``sampler="gp"`` for a
        Bayesian search where ``torch`` or ``scipy`` is not installed.

    Examples:
      >>> config = SearchConfig(method="random", generations=2, population_size=4, sample_size=2)
      >>> config.method, config.objectives
      ('random', ('accuracy', 'params'))
    """

    method: str = "evolution"
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
        def normalise(name, value):
            object.__setattr__(self, name, value)  # plain Python values: the config is a checkpoint's fingerprint

        where = "SearchConfig"
        check_choice(where, "method", self.method, METHODS)
        for name in ("generations", "population_size", "steps", "batch_size", "eval_rows", "checkpoint_every"):
            normalise(name, check_int(where, name, getattr(self, name), minimum=1))
        normalise(
            "sample_size", check_int(where, "sample_size", self.sample_size, minimum=1, maximum=self.population_size)
        )
        normalise("learning_rate", check_positive(where, "learning_rate", self.learning_rate))
        normalise("mutation_rate", check_number(where, "mutation_rate", self.mutation_rate, minimum=0, maximum=1))
        check_choice(where, "execution", self.execution, EXECUTIONS)
        normalise("seed", check_int(where, "seed", self.seed))
        try:
            normalise("objectives", check_objectives(self.objectives))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        check_choice(where, "selection", self.selection, SELECTIONS)
        check_choice(where, "sampler", self.sampler, SAMPLERS)
        if self.sampler == "gp" and self.method == "bayesian":
            missing = [name for name in ("torch", "scipy") if importlib.util.find_spec(name) is None]
            if missing:
                raise ValueError(
                    f"{where}: sampler='gp' (optuna's GPSampler) needs {' and '.join(missing)}, which is not "
                    "installed; install it or use sampler='tpe'"
                )


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One trained architecture: its genes, score and size.

    Attributes:
      generation: the generation that trained it.
      genome: its decoded gene values (see :func:`hamjax.search.nas.decode`).
      accuracy: validation accuracy, ``-inf`` when it diverged.
      params: parameters of the materialised model.
      description: :func:`hamjax.search.nas.describe` of the genome.
      latency_ms: the batch-1 p50 latency of the materialised network:
        measured for every candidate when latency is an objective, else
        ``None`` in the history and measured for the members of the Pareto front.

    Examples:
      >>> Candidate(0, {"depth": 1}, 0.9, 1200, "depth 1: dense/64/relu").to_dict()["params"]
      1200
    """

    generation: int
    genome: dict
    accuracy: float
    params: int
    description: str
    latency_ms: float | None = None

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (what the checkpointed history holds)."""
        return dataclasses.asdict(self)


def objective_values(candidate: Candidate, objectives: Sequence[str]) -> list[float]:
    """The candidate's value of each objective (accuracy, params, latency in ms).

    Args:
      candidate: a :class:`Candidate`.
      objectives: names from :data:`OBJECTIVES`.

    Returns:
      One value per objective, in the order given.

    Examples:
      >>> objective_values(Candidate(0, {}, 0.9, 1200, "", 0.5), ("accuracy", "latency"))
      [0.9, 0.5]
    """
    table = {"accuracy": candidate.accuracy, "params": candidate.params, "latency": candidate.latency_ms}
    return [table[name] for name in objectives]


def objective_columns(candidates: Sequence[Candidate], objectives: Sequence[str]) -> list[list[float]]:
    """One list per objective: its values over the candidates (the columns :func:`pareto_front` takes).

    Args:
      candidates: the candidates, in order.
      objectives: names from :data:`OBJECTIVES`.

    Returns:
      ``len(objectives)`` lists of ``len(candidates)`` values.

    Examples:
      >>> objective_columns([Candidate(0, {}, 0.9, 1200, ""), Candidate(0, {}, 0.8, 300, "")], ("accuracy", "params"))
      [[0.9, 0.8], [1200, 300]]
    """
    rows = [objective_values(c, objectives) for c in candidates]
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
    costs = objective_columns(candidates, config.objectives)[1:]
    rank = nondominated_rank(acc, *costs)
    order = np.lexsort((np.arange(len(candidates)), -acc, rank))
    position = np.empty(len(candidates), np.float32)
    position[order] = np.arange(len(candidates))
    return len(candidates) - 1 - position


def _genome_batch(space: Space, members: Sequence[dict]) -> dict:
    rows = [space.encode(m) for m in members]
    return {name: jnp.concatenate([r[name] for r in rows]) for name in space.names}


def _sampler(config: SearchConfig, generation: int):
    import optuna

    seed = config.seed * 100_003 + generation
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.population_size)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.population_size)


def _propose_bayesian(space: Space, history: list[Candidate], config: SearchConfig, generation: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    genes = space.genes
    dists = {}
    for name, gene in genes.items():
        if isinstance(gene, Int):
            dists[name] = optuna.distributions.IntDistribution(gene.low, gene.high)
        elif isinstance(gene, Float):
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
        worst = [max(column) for column in objective_columns(history, config.objectives)[1:]]
    else:
        study = optuna.create_study(direction="maximize", sampler=sampler)
    for c in history:
        encoded = space.encode(c.genome)
        params = {n: int(encoded[n][0]) if not isinstance(genes[n], Float) else float(encoded[n][0]) for n in genes}
        finite = bool(np.isfinite(c.accuracy))
        value = c.accuracy if finite else 0.0
        if multi:
            costs = objective_values(c, config.objectives)[1:] if finite else worst
            trial = optuna.trial.create_trial(params=params, distributions=dists, values=[value, *costs])
        else:
            trial = optuna.trial.create_trial(params=params, distributions=dists, value=value)
        study.add_trial(trial)
    trials = [study.ask(dists) for _ in range(config.population_size)]
    dtypes = {n: jnp.float32 if isinstance(g, Float) else jnp.int32 for n, g in genes.items()}
    return {n: jnp.asarray([t.params[n] for t in trials], dtypes[n]) for n in genes}


def propose(space: Space, history: list[Candidate], config: SearchConfig, generation: int) -> dict:
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
    if config.method == "random" or not history:
        return space.sample(key, config.population_size)
    if config.method == "bayesian":
        return _propose_bayesian(space, history, config, generation)
    alive = history[-config.population_size :]
    fitness = jnp.asarray(tournament_fitness(alive, config), jnp.float32)
    k_select, k_mutate = jax.random.split(key)
    parents = selection.tournament(k_select, fitness, config.population_size, k=min(config.sample_size, len(alive)))
    batch = _genome_batch(space, [alive[int(i)].genome for i in np.asarray(parents)])
    return evolution.mutate(k_mutate, space, batch, rate=config.mutation_rate)
