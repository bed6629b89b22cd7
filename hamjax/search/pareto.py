"""Pareto fronts and non-dominated sorting over one maximised accuracy and any number of minimised costs.

Used by :mod:`hamjax.search.engine` for multi-objective architecture search
(accuracy against parameters and measured latency), and usable on its own for
any table of candidates: both functions take plain sequences and return
indices or ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _objective_matrix(where: str, accuracy, costs) -> tuple[np.ndarray, np.ndarray]:
    """``(acc, F)``: accuracy as float64 and the ``(N, 1 + len(costs))`` matrix of objectives to minimise."""
    acc = np.asarray(accuracy, np.float64)
    if acc.ndim != 1:
        raise ValueError(f"{where}: accuracy must be 1-D, got shape {acc.shape}")
    columns = [-acc]
    for i, cost in enumerate(costs):
        try:
            column = np.asarray(cost, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: costs[{i}] must be real numbers (a latency not measured?)") from None
        if column.shape != acc.shape:
            raise ValueError(
                f"{where}: accuracy and costs must be 1-D of one length, got {acc.shape} and costs[{i}] {column.shape}"
            )
        if np.isnan(column).any():
            raise ValueError(f"{where}: costs[{i}] holds NaN or None (a latency not measured?)")
        columns.append(column)
    return acc, np.stack(columns, axis=1)


def pareto_front(accuracy: Sequence[float], *costs: Sequence[float]) -> list[int]:
    """Indices of the candidates no other one dominates: higher accuracy, lower costs.

    Candidate ``j`` dominates ``i`` when it is at least as good on every
    objective (accuracy, then each cost) and better on one. A non-finite
    accuracy (a diverged candidate) is never on the front; of candidates with
    equal objective vectors only the first is kept. The front is ordered by
    the first cost, then the next ones, then accuracy (higher first).

    Args:
      accuracy: ``(N,)`` accuracies, maximised.
      *costs: any number of ``(N,)`` real arrays, each minimised (parameters,
        latency); ``pareto_front(accuracy)`` is the first most accurate.

    Returns:
      Indices into the inputs, in front order.

    Raises:
      ValueError: inputs not 1-D of one length, or a NaN cost.

    Examples:
      >>> pareto_front([0.9, 0.8, 0.95, 0.85], [100, 50, 300, 200])
      [1, 0, 2]
      >>> pareto_front([0.9, 0.9, 0.8], [100, 100, 50], [2.0, 1.0, 1.0])
      [2, 1]
    """
    acc, objectives = _objective_matrix("pareto_front", accuracy, costs)
    keep = np.flatnonzero(np.isfinite(acc))
    # In lexicographic order of (costs, -accuracy, index) every candidate that
    # dominates or equals another comes before it, so one pass against the
    # front so far suffices: whatever weakly dominates a later candidate is
    # on the front or weakly dominated by a member of it.
    keys = [keep] + [objectives[keep, c] for c in (0, *range(objectives.shape[1] - 1, 0, -1))]
    front: list[int] = []
    for i in keep[np.lexsort(keys)]:
        if not front or not np.all(objectives[front] <= objectives[i], axis=1).any():
            front.append(int(i))
    return front


def nondominated_rank(accuracy: Sequence[float], *costs: Sequence[float]) -> np.ndarray:
    """Non-dominated sorting (NSGA-II): each candidate's front number, 0 = dominated by none of the others.

    Rank ``r`` is the set of candidates dominated only by candidates of ranks
    below ``r`` (dominance as in :func:`pareto_front`; equal objective vectors
    share a rank). A non-finite accuracy ranks after every finite one. The
    comparison is all-pairs, meant for a population, not a long history.

    Args:
      accuracy: ``(N,)`` accuracies, maximised.
      *costs: ``(N,)`` real arrays, each minimised.

    Returns:
      ``(N,)`` int64 ranks.

    Raises:
      ValueError: inputs not 1-D of one length, or a NaN cost.

    Examples:
      >>> nondominated_rank([0.9, 0.9, 0.5, float("-inf")], [1000, 100, 50, 10]).tolist()
      [1, 0, 0, 2]
    """
    acc, objectives = _objective_matrix("nondominated_rank", accuracy, costs)
    finite = np.isfinite(acc)
    a, b = objectives[:, None, :], objectives[None, :, :]
    # dominates[j, i]: j dominates i; diverged candidates neither dominate nor count
    dominates = np.all(a <= b, axis=2) & np.any(a < b, axis=2) & finite[:, None] & finite[None, :]
    rank = np.zeros(acc.shape, np.int64)
    remaining, r = finite.copy(), 0
    while remaining.any():
        current = remaining & ~np.any(dominates & remaining[:, None], axis=0)
        rank[current] = r
        remaining &= ~current
        r += 1
    rank[~finite] = r
    return rank
