"""Which strategy proposes next in ensemble mode: tournament, roulette or rank selection over the shared history.

An ensemble runs several strategies on one history; before each proposal
:func:`select` picks one by its fitness, the best
:func:`hamjax.autotune.strategies.reward` among the evaluations it proposed
(feasible ones first, since infeasible rewards carry the penalty). A
strategy that has proposed nothing yet is picked first, in the order given,
so every one gets a turn.

* ``"tournament"``: two strategies drawn at random, the fitter proposes;
* ``"roulette"``: drawn with probability proportional to fitness minus the
  lowest fitness, plus a floor of 5 % of the spread (the worst keeps a chance);
* ``"rank"``: drawn with probability proportional to its rank (1 for the
  worst, n for the best), whatever the fitness gaps.

Examples:
  >>> import numpy as np
  >>> from hamjax.autotune import selection
  >>> selection.select({"rules": [], "random": []}, "rank", np.random.default_rng(0))
  'rules'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from hamjax._checks import check_choice
from hamjax.autotune.strategies import Evaluation, reward

__all__ = ["METHODS", "fitness", "select"]

METHODS = ("tournament", "roulette", "rank")
"""The selection methods of :func:`select`."""


def fitness(evaluations: Sequence[Evaluation]) -> float:
    """A strategy's fitness: the best reward among its evaluations, ``-inf`` without any.

    Examples:
      >>> from hamjax.autotune.selection import fitness
      >>> fitness([])
      -inf
    """
    return max((reward(e) for e in evaluations), default=-math.inf)


def select(
    histories_by_strategy: Mapping[str, Sequence[Evaluation]],
    method: str = "tournament",
    rng: np.random.Generator | None = None,
) -> str:
    """The name of the strategy that proposes next.

    Args:
      histories_by_strategy: ``{strategy name: the evaluations it proposed}``, in a fixed order.
      method: one of :data:`METHODS`.
      rng: a ``numpy.random.Generator`` (``None``: a generator seeded with 0).

    Returns:
      A key of ``histories_by_strategy``.

    Raises:
      ValueError: no strategies, or an unknown method.
      TypeError: ``rng`` that is not a ``numpy.random.Generator``.

    Examples:
      >>> import numpy as np
      >>> from hamjax.autotune import objective, selection, strategies
      >>> from hamjax.autotune.space import RecipeSpace
      >>> recipe = RecipeSpace("mlp").sample(np.random.default_rng(0))
      >>> m = objective.Measured(0.9, 1.0, 100, 10)
      >>> good = strategies.Evaluation(recipe, m, 1.0, (), "full", 0.0, "hybrid")
      >>> bad = strategies.Evaluation(recipe, m, 0.1, (), "full", 0.0, "random")
      >>> selection.select({"hybrid": [good], "random": [bad]}, "tournament", np.random.default_rng(0))
      'hybrid'
    """
    check_choice("select", "method", method, METHODS)
    names = list(histories_by_strategy)
    if not names:
        raise ValueError("select: histories_by_strategy must name at least one strategy, got none")
    if rng is None:
        rng = np.random.default_rng(0)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"select: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for name in names:
        if not histories_by_strategy[name]:
            return name
    values = np.array([fitness(histories_by_strategy[n]) for n in names])
    if len(names) == 1:
        return names[0]
    if method == "tournament":
        i, j = rng.choice(len(names), size=2, replace=False)
        return names[i] if values[i] >= values[j] else names[j]
    if method == "roulette":
        spread = values.max() - values.min()
        weights = values - values.min() + (0.05 * spread if spread > 0 else 1.0)
    else:
        weights = np.empty(len(names))
        weights[np.argsort(values, kind="stable")] = np.arange(1, len(names) + 1)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]
