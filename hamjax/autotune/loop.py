"""The state of one autotune run: strategies taking turns, screenings, full evaluations, the history and the log.

:class:`Loop` is what :func:`hamjax.autotune.optimize_auto` drives: each
:meth:`Loop.step` asks a strategy (chosen by selection in ensemble mode)
for a candidate, screens it cheaply while screenings last, gives a promising
one a full evaluation, lets every strategy observe every evaluation, and
keeps the files and model of the best feasible candidate only.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from hamjax import recipes
from hamjax.autotune import objective, selection, strategies

FAILED_SCORE = -10.0
"""The score a candidate that failed to run gets (about a 14-point accuracy drop at equal weights)."""

PROMOTE_SLACK = 1.0
"""Points of accuracy drop beyond the limit a cheap evaluation may show and still earn a full one (short finetunes recover less)."""

RANK_ETA = 3
"""Successive-halving promotion (as ASHA's rungs): of the screenings that met the size limits, one whose accuracy is
in the top ``1 / RANK_ETA`` of them earns a full evaluation even when its short finetune left it far from the
accuracy limit (a pruned attention model screened after one epoch is tens of points down, and within a point after
sixty); a screening waits for its rank (:meth:`Loop.promotable`)."""


def results_of(measured, baseline, constraints, *, score: float, violations: tuple) -> dict:
    """A knowledge-base record's ``results``: drops, ratios, feasibility and score, JSON-safe."""
    return {
        "accuracy_drop": round((baseline.accuracy - measured.accuracy) * 100.0, 4),
        "latency_ms": measured.latency_ms,
        "size_bytes": int(measured.size_bytes),
        "size_reduction": baseline.size_bytes / max(measured.size_bytes, 1),
        "file_bytes": measured.file_bytes,
        "speedup": None
        if not (measured.latency_ms and baseline.latency_ms)
        else baseline.latency_ms / measured.latency_ms,
        "feasible": not violations,
        "score": score,
        "constraints": {k: v for k, v in dataclasses.asdict(constraints).items() if v is not None},
    }


def summary(recipe) -> str:
    """A recipe in one line: each step's kind and the fields it sets away from their defaults.

    Examples:
      >>> from hamjax import recipes
      >>> summary(recipes.validate({"name": "r", "steps": [{"kind": "prune", "sparsity": 0.7}, {"kind": "quantize"}]}))
      'prune(sparsity=0.7) > quantize()'
    """
    kinds = recipes.step_kinds()
    parts = []
    for step in recipe.steps:
        fields = kinds[step.kind].fields
        changed = [
            f"{name}={value}"
            for name, value in step.params.items()
            if name != "stage" and (name not in fields or value != fields[name].default)
        ]
        parts.append(f"{step.kind}({', '.join(changed)})")
    return " > ".join(parts)


def describe(measured, baseline) -> str:
    drop = (baseline.accuracy - measured.accuracy) * 100.0
    parts = [f"accuracy {measured.accuracy:.4f} (drop {drop:+.2f} pt)"]
    parts.append(f"size {measured.size_bytes} B ({baseline.size_bytes / max(measured.size_bytes, 1):.2f}x smaller)")
    if measured.latency_ms and baseline.latency_ms:
        parts.append(f"latency {measured.latency_ms:.3f} ms ({baseline.latency_ms / measured.latency_ms:.2f}x faster)")
    return ", ".join(parts)


def promising(measured, baseline, constraints, recovery: float = 0.0) -> tuple[bool, str]:
    """Whether a screening earns a full evaluation: size met, and accuracy within the limit plus PROMOTE_SLACK.

    Args:
      measured, baseline: the screening's and the dense model's :class:`~hamjax.autotune.objective.Measured`.
      constraints: the run's :class:`~hamjax.autotune.objective.Constraints`.
      recovery: points of accuracy a full evaluation is expected to win back over its screening
        (:meth:`Loop.recovery`), >= 0.

    Returns:
      ``(promote, why not)``.
    """
    loose = dataclasses.replace(
        constraints,
        max_accuracy_drop=constraints.max_accuracy_drop + PROMOTE_SLACK + max(float(recovery), 0.0),
        max_latency_ms=None,  # a screening measures no latency: the full evaluation decides
        min_speedup=None,
    )
    found = objective.violations(measured, baseline, loose)
    return (not found), "; ".join(found)


def sized(measured, baseline, constraints) -> bool:
    """Whether a screening meets every limit a screening can measure except accuracy (the size limits)."""
    return promising(measured, baseline, dataclasses.replace(constraints, max_accuracy_drop=100.0))[0]


class Loop:
    """The state of one :func:`optimize_auto` run (strategies, history, log, evaluator)."""

    def __init__(
        self, evaluator, strategies_by_name, constraints, weights, *, seed, selection_method, screen_limit, echo
    ):
        self.evaluator = evaluator
        self.strategies = strategies_by_name
        self.constraints, self.weights = constraints, weights
        self.history = strategies.History()
        self.log: list[str] = []
        self.rng = np.random.default_rng(seed)
        self.selection_method = selection_method
        self.screen_limit = screen_limit
        self.screenings = 0
        self.screened: list[float] = []  # accuracies of the screenings that met the size limits
        self.pairs: list[tuple[float, float]] = []  # (screened, full) accuracies of the same recipe
        self.pool: list[tuple] = []  # (strategy, recipe, screening, log head) of sized screenings not promoted
        self.by_strategy: dict[str, list] = {name: [] for name in strategies_by_name}
        self.best = None  # (evaluation, outcome) of the best feasible full evaluation
        self.full = 0
        self.echo = echo

    def say(self, line: str) -> None:
        self.log.append(line)
        if self.echo is not None:
            self.echo(line)

    def recovery(self) -> float:
        """Points a full evaluation won back over its screening: the median over the pairs so far, >= 0 (0 before any)."""
        if not self.pairs:
            return 0.0
        return max(float(np.median([100.0 * (full - cheap) for cheap, full in self.pairs])), 0.0)

    def pick(self):
        names = list(self.strategies)
        if len(names) == 1:
            return names[0]
        return selection.select(self.by_strategy, self.selection_method, self.rng)

    def record(self, name: str, recipe, outcome, fidelity: str, error: str | None, seconds: float):
        base = self.evaluator.baseline().measured
        if error is None:
            measured = outcome.measured
            found = tuple(objective.violations(measured, base, self.constraints))
            value = float(objective.score(measured, base, self.weights))
        else:
            measured = objective.Measured(accuracy=0.0, latency_ms=None, size_bytes=base.size_bytes, params=base.params)
            found, value = (f"failed: {error}",), FAILED_SCORE
        evaluation = strategies.Evaluation(recipe, measured, value, found, fidelity, seconds, name)
        self.history.append(evaluation)
        self.by_strategy[name].append(evaluation)
        for strategy in self.strategies.values():
            strategy.observe(evaluation)
        return evaluation

    def evaluate(self, name: str, recipe, fidelity: str):
        start = time.perf_counter()
        try:
            outcome = self.evaluator.run(recipe, fidelity)
            error = None
        except (ValueError, RuntimeError, recipes.RecipeError) as err:
            outcome, error = None, str(err).splitlines()[0][:300]
        evaluation = self.record(name, recipe, outcome, fidelity, error, time.perf_counter() - start)
        return evaluation, outcome

    def keep(self, evaluation, outcome) -> None:
        """Keep the files and model of the best feasible full evaluation; drop the rest."""
        if outcome is None:  # failed
            return
        better = (
            evaluation.fidelity == "full"
            and not evaluation.violations
            and (self.best is None or evaluation.score > self.best[0].score)
        )
        if better:
            if self.best is not None:
                self.evaluator.discard(self.best[1])
            self.best = (evaluation, outcome)
        else:
            self.evaluator.discard(outcome)

    def promotable(self):
        """The best waiting screening (met the size limits, not promoted) in the top ``1 / RANK_ETA`` of them all.

        While screenings last, the top ``floor(n / RANK_ETA)`` of the ``n`` sized screenings count (none before
        ``RANK_ETA`` of them); once they are spent, the top ``ceil(n / RANK_ETA)``, so the best screened candidate
        gets its full evaluation before unscreened proposals do. ``None`` when no waiting screening qualifies.
        """
        if not self.pool:
            return None
        n = len(self.screened)
        top = n // RANK_ETA if self.screenings < self.screen_limit else -(-n // RANK_ETA)
        if top < 1:
            return None
        bar = sorted(self.screened, reverse=True)[top - 1]
        best = max(self.pool, key=lambda entry: entry[2].measured.accuracy)
        return best if best[2].measured.accuracy >= bar else None

    def step(self, index: int) -> None:
        base = self.evaluator.baseline().measured
        waiting = self.promotable()
        if waiting is not None:  # an earlier screening now ranks high enough: its full evaluation comes first
            self.pool.remove(waiting)
            name, recipe, screened, _ = waiting
            head = (
                f"[{index}] {name}'s {summary(recipe)}, screened earlier ({describe(screened.measured, base)}): "
                f"promoted by rank (top 1/{RANK_ETA} of {len(self.screened)} screenings)"
            )
            self.full_evaluation(name, recipe, screened, head)
            return
        name = self.pick()
        strategy = self.strategies[name]
        recipe = strategy.propose(self.history)
        reason = getattr(strategy, "last_reason", "") or "no reason given"
        head = f"[{index}] {name} proposes {summary(recipe)}: {reason}"
        screened = None
        if self.screenings < self.screen_limit:
            self.screenings += 1
            screened, outcome = self.evaluate(name, recipe, "cheap")
            self.evaluator.discard(outcome) if outcome is not None else None
            if screened.violations and screened.violations[0].startswith("failed"):
                self.say(f"{head} -> rejected: {screened.violations[0]}")
                return
            recovery = self.recovery()
            promote, why = promising(screened.measured, base, self.constraints, recovery)
            cheap_text = describe(screened.measured, base)
            how = "promoted" if recovery == 0 else f"promoted (full evaluations won back {recovery:.1f} pt so far)"
            if sized(screened.measured, base, self.constraints):
                self.screened.append(screened.measured.accuracy)
                if not promote:
                    self.pool.append((name, recipe, screened, head))
                    why += "; waits for its rank among the screenings"
            if not promote:
                self.say(f"{head} -> cheap: {cheap_text}; rejected without a full evaluation: {why}")
                return
            head += f" -> cheap: {cheap_text}; {how}"
        self.full_evaluation(name, recipe, screened, head)

    def full_evaluation(self, name: str, recipe, screened, head: str) -> None:
        """Run ``recipe`` in full, learn from its screening (if any), say the result and keep the best."""
        base = self.evaluator.baseline().measured
        evaluation, outcome = self.evaluate(name, recipe, "full")
        self.full += 1
        if screened is not None and outcome is not None:
            self.pairs.append((screened.measured.accuracy, evaluation.measured.accuracy))
        if evaluation.violations:
            self.say(f"{head} -> full: {'; '.join(evaluation.violations)}")
        else:
            self.say(f"{head} -> full: {describe(evaluation.measured, base)}; feasible, score {evaluation.score:.3f}")
        self.keep(evaluation, outcome)
