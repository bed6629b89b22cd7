"""How a study proposes and stops trials: Optuna samplers and pruners by name, and the objectives' directions.

Samplers (:data:`SAMPLERS`): ``"tpe"`` (with the constant-liar strategy, so
the trials of one batch, asked before any is told, spread out instead of
repeating one point), ``"random"``, ``"grid"``, ``"cmaes"`` (needs the
``cmaes`` package), ``"nsga2"``, ``"nsga3"`` (several objectives),
``"qmc"`` (scrambled Sobol) and ``"gp"`` (needs torch).

Pruners (:data:`PRUNERS`), Optuna's under their Optuna names:
``"median"``, ``"percentile"`` (25th), ``"successive_halving"``,
``"hyperband"`` and ``"wilcoxon"``; ``None`` or ``"none"`` prunes nothing.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence

from hamjax._checks import check_choice

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsga2", "nsga3", "qmc", "gp")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "wilcoxon")
OBJECTIVES = {"accuracy": "maximize", "size": "minimize", "latency": "minimize"}


def check_objectives(where: str, objectives: str | Sequence[str]) -> tuple[str, ...]:
    """The objective names as a tuple, ``"accuracy"`` first.

    Args:
      where: the caller label of errors.
      objectives: names from :data:`OBJECTIVES`, a sequence or one comma-separated string.

    Returns:
      The names, each once, accuracy first, the others in the given order.

    Examples:
      >>> check_objectives("tune", "latency,accuracy")
      ('accuracy', 'latency')
    """
    names = [n.strip() for n in objectives.split(",")] if isinstance(objectives, str) else list(objectives)
    for name in names:
        check_choice(where, "objectives", name, tuple(OBJECTIVES))
    if len(set(names)) != len(names) or "accuracy" not in names:
        raise ValueError(f"{where}: objectives must name 'accuracy' and each name once, got {names}")
    return ("accuracy", *(n for n in names if n != "accuracy"))


def directions(objectives: Sequence[str]) -> list[str]:
    """The Optuna study directions of ``objectives``.

    Examples:
      >>> directions(("accuracy", "size"))
      ['maximize', 'minimize']
    """
    return [OBJECTIVES[name] for name in objectives]


def make_sampler(name: str, *, seed: int, space, batch: int, objectives: Sequence[str]):
    """The Optuna sampler called ``name``.

    Args:
      name: one of :data:`SAMPLERS`, or an ``optuna.samplers.BaseSampler`` (returned as it is).
      seed: the sampler's seed.
      space: the :class:`hamjax.tune.Space` (a grid is built from it).
      batch: trials asked at once (the NSGA population size).
      objectives: the study's objectives; NSGA-II/III need two or more, CMA-ES, QMC and GP one.

    Returns:
      An ``optuna.samplers.BaseSampler``.

    Raises:
      ValueError: an unknown name, a sampler that does not fit the
        objectives, or one whose package is not installed.

    Examples:
      >>> from hamjax.tune import Space
      >>> space = Space({"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}})
      >>> type(make_sampler("tpe", seed=0, space=space, batch=8, objectives=("accuracy",))).__name__
      'TPESampler'
    """
    import optuna

    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    check_choice("tune", "sampler", name, SAMPLERS)
    multi = len(objectives) > 1
    if name in ("nsga2", "nsga3") and not multi:
        raise ValueError(f"tune: sampler {name!r} is for several objectives, got objectives {tuple(objectives)}")
    if name == "gp" and importlib.util.find_spec("torch") is None:
        raise ValueError("tune: sampler 'gp' needs torch (pip install torch); choose 'tpe' without it")
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ValueError("tune: sampler 'cmaes' needs the cmaes package (pip install cmaes)")
    with warnings.catch_warnings():  # Optuna marks several of these (and TPE's constant liar) experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _build_sampler(name, seed=seed, space=space, batch=batch)


def _build_sampler(name: str, *, seed: int, space, batch: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _grid_sampler(space.grid(), seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, popsize=batch, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(batch, 2))
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=max(batch, 2))
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_asynchronous_seeding=False)
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(batch, 10))


def make_pruner(name: str | None, *, epochs: int):
    """The Optuna pruner called ``name`` (``None`` or ``"none"``: Optuna's ``NopPruner``).

    Args:
      name: one of :data:`PRUNERS`, ``None``, or an ``optuna.pruners.BasePruner`` (returned as it is).
      epochs: a trial's epochs, the pruners' largest resource.

    Examples:
      >>> type(make_pruner("hyperband", epochs=9)).__name__
      'HyperbandPruner'
    """
    import optuna

    if isinstance(name, optuna.pruners.BasePruner):
        return name
    name = "none" if name is None else name
    check_choice("tune", "pruner", name, PRUNERS)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=4, n_warmup_steps=0)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)


def judging_order(members: Sequence[int], epochs: Sequence[int], values: Sequence[float], pruner) -> list[int]:
    """The order in which a round's members ask a successive-halving pruner whether to stop, as one cohort per epoch.

    Optuna's successive halving (and each Hyperband bracket) judges a trial
    at a rung against the values recorded there so far, its own included, and
    records its value as it judges; the first trials to reach a rung face few
    others and go on. Members that reached the same epoch in one round are one
    cohort: asked best first, then the rest from the best to the worst, then
    the cohort's top ``1 / reduction_factor`` from the worst up, the rule
    promotes that top share, as a synchronous rung would, instead of whichever
    come first. Other pruners keep the members' order.

    Args:
      members: the members' slots.
      epochs: each member's epoch (the cohorts).
      values: each member's value there, larger being better.
      pruner: the study's pruner; its ``reduction_factor`` (Optuna's successive
        halving and Hyperband pruners) sizes a cohort's top share.

    Returns:
      ``members`` reordered.

    Examples:
      >>> import optuna
      >>> pruner = optuna.pruners.SuccessiveHalvingPruner(reduction_factor=2)
      >>> judging_order([0, 1, 2, 3], [1, 1, 1, 1], [0.1, 0.4, 0.3, 0.2], pruner)
      [1, 3, 0, 2]
      >>> judging_order([0, 1], [1, 1], [0.1, 0.4], optuna.pruners.MedianPruner())
      [0, 1]
    """
    eta = getattr(pruner, "_reduction_factor", None)
    if not eta:
        return list(members)
    cohorts: dict[int, list[tuple[float, int]]] = {}
    for member, epoch, value in zip(members, epochs, values, strict=True):
        cohorts.setdefault(epoch, []).append((value, member))
    order = []
    for epoch in sorted(cohorts):
        ranked = [m for _, m in sorted(cohorts[epoch], key=lambda vm: -vm[0])]  # stable: ties keep slot order
        top = max(len(ranked) // int(eta), 1)
        order += ranked[:1] + ranked[top:] + ranked[1:top][::-1]
    return order


def _grid_sampler(grid: dict, seed: int):
    """Optuna's grid sampler, less its stop when the grid is spent.

    ``GridSampler.after_trial`` calls ``study.stop()``, which raises outside
    ``study.optimize``; here the trial budget (at most the grid's size) ends the study.
    """
    import optuna

    class BatchGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            del study, trial, state, values

    return BatchGridSampler(grid, seed=seed)


def grid_size(space) -> int:
    """The number of points of ``space``'s grid (:meth:`hamjax.tune.Space.grid`).

    Examples:
      >>> from hamjax.tune import Space
      >>> grid_size(Space({"bits": {"low": 4, "high": 8}, "batch_size": {"choices": [64, 128]}}))
      10
    """
    return math.prod(len(values) for values in space.grid().values())
