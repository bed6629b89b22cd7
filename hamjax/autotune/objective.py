"""What autotune optimises: constraints a candidate must meet, weights of speed, memory and accuracy, and the score.

A candidate is measured (:class:`Measured`: accuracy on the validation
split, latency in onnxruntime, bytes of its storage, parameters) and
compared with the dense model's measurement, the baseline.
:func:`violations` says which :class:`Constraints` it breaks (empty: it is
feasible); :func:`score` weighs its gains (:class:`Weights`); and
:func:`penalised` turns both into the one number searches maximise.

Examples:
  >>> from hamjax.autotune import objective
  >>> base = objective.Measured(accuracy=0.95, latency_ms=2.0, size_bytes=4000, params=1000)
  >>> small = objective.Measured(accuracy=0.945, latency_ms=1.0, size_bytes=1000, params=1000)
  >>> objective.violations(small, base, objective.Constraints(max_accuracy_drop=1.0, min_size_reduction=4.0))
  ()
  >>> round(objective.score(small, base, objective.Weights()), 4)
  0.5776
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

from hamjax._checks import check_number

__all__ = [
    "INFEASIBLE_PENALTY",
    "Constraints",
    "Measured",
    "Violation",
    "Weights",
    "accuracy_drop",
    "penalised",
    "score",
    "violations",
]

POINT = math.log(2.0)
"""What one point of accuracy drop costs in the score: as much as a 2x loss of speed or memory."""

INFEASIBLE_PENALTY = 2.0
""":func:`penalised` subtracts ``INFEASIBLE_PENALTY * (1 + excess)`` from an infeasible candidate's score."""

_EXCESS_CAP = 10.0


class Measured(NamedTuple):
    """One model's measurement.

    Attributes:
      accuracy: validation accuracy, a fraction in [0, 1].
      latency_ms: milliseconds per batch in onnxruntime, or ``None`` when not measured.
      size_bytes: bytes of the stored weights (the int storage for int8);
        what size constraints and the score's memory term read.
      params: parameter count.
      file_bytes: bytes of the deployed file (an ONNX model: its graph
        besides the weights), or ``None`` when nothing was exported.

    Examples:
      >>> from hamjax.autotune.objective import Measured
      >>> Measured(0.9, None, 1000, 250).latency_ms is None
      True
    """

    accuracy: float
    latency_ms: float | None
    size_bytes: int
    params: int
    file_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Limits a candidate must meet, each relative to the dense baseline or absolute.

    Args:
      max_accuracy_drop: the largest drop of validation accuracy, in points
        (1.0 = one percentage point), >= 0.
      max_latency_ms: the largest latency in milliseconds, > 0, or ``None``.
      max_size_bytes: the largest stored size in bytes, > 0, or ``None``.
      min_size_reduction: the smallest ratio dense size / candidate size
        (4.0 = four times smaller), >= 1, or ``None``.
      min_speedup: the smallest ratio dense latency / candidate latency, > 0, or ``None``.

    Constraints that no candidate can meet together are the caller's
    concern: they are checked one by one, and :func:`violations` names each
    one a candidate breaks.

    Raises:
      ValueError: a limit out of its range, naming it.

    Examples:
      >>> from hamjax.autotune.objective import Constraints
      >>> Constraints(max_accuracy_drop=0.5).max_accuracy_drop
      0.5
      >>> Constraints(min_size_reduction=0.5)
      Traceback (most recent call last):
      ...
      ValueError: Constraints: min_size_reduction must be a finite number >= 1, got 0.5
    """

    max_accuracy_drop: float = 1.0
    max_latency_ms: float | None = None
    max_size_bytes: float | None = None
    min_size_reduction: float | None = None
    min_speedup: float | None = None

    def __post_init__(self):
        where = "Constraints"
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("max_accuracy_drop", check_number(where, "max_accuracy_drop", self.max_accuracy_drop, minimum=0))
        for name in ("max_latency_ms", "max_size_bytes", "min_speedup"):
            value = getattr(self, name)
            if value is not None:
                set_(name, check_number(where, name, value, minimum=0, exclusive_minimum=True))
        if self.min_size_reduction is not None:
            set_("min_size_reduction", check_number(where, "min_size_reduction", self.min_size_reduction, minimum=1))

    def to_dict(self) -> dict:
        """The constraints as a JSON-ready dict (the knowledge base's ``results["constraints"]``).

        Examples:
          >>> from hamjax.autotune.objective import Constraints
          >>> Constraints(min_speedup=2.0).to_dict()["min_speedup"]
          2.0
        """
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Weights:
    """How much speed, memory and accuracy count in :func:`score`.

    Args:
      speed, memory, accuracy: finite weights >= 0, not all zero.

    Raises:
      ValueError: a negative or non-finite weight, or all three zero.

    Examples:
      >>> from hamjax.autotune.objective import Weights
      >>> Weights(speed=2.0).total
      4.0
      >>> Weights(0, 0, 0)
      Traceback (most recent call last):
      ...
      ValueError: Weights: speed, memory and accuracy must not all be zero, got (0, 0, 0)
    """

    speed: float = 1.0
    memory: float = 1.0
    accuracy: float = 1.0

    def __post_init__(self):
        for name in ("speed", "memory", "accuracy"):
            object.__setattr__(self, name, check_number("Weights", name, getattr(self, name), minimum=0))
        if self.total == 0:
            raise ValueError(
                "Weights: speed, memory and accuracy must not all be zero, "
                f"got ({self.speed:g}, {self.memory:g}, {self.accuracy:g})"
            )

    @property
    def total(self) -> float:
        """The sum of the three weights."""
        return self.speed + self.memory + self.accuracy


class Violation(str):
    """One broken constraint: a message that also carries how far it is broken.

    It is a ``str`` (the message names the constraint, the measured value and
    the limit) with ``name`` (the constraint's field) and ``excess`` (how far
    past the limit, relative to it: 0.5 is 50 % too much or too little).

    Examples:
      >>> from hamjax.autotune.objective import Violation
      >>> v = Violation("max_size_bytes: 3000 > 2000", name="max_size_bytes", excess=0.5)
      >>> v.excess, v.startswith("max_size")
      (0.5, True)
    """

    name: str
    excess: float

    def __new__(cls, message: str, *, name: str, excess: float):
        self = super().__new__(cls, message)
        self.name, self.excess = name, float(excess)
        return self


def accuracy_drop(measured: Measured, baseline: Measured) -> float:
    """The accuracy the candidate loses against the baseline, in points (negative when it gains).

    Examples:
      >>> from hamjax.autotune.objective import Measured, accuracy_drop
      >>> round(accuracy_drop(Measured(0.9, None, 1, 1), Measured(0.95, None, 1, 1)), 6)
      5.0
    """
    return 100.0 * (float(baseline.accuracy) - float(measured.accuracy))


def violations(measured: Measured, baseline: Measured, constraints: Constraints) -> tuple[Violation, ...]:
    """The constraints ``measured`` breaks, each a :class:`Violation` naming the constraint, the value and the limit.

    A latency constraint on a candidate (or baseline) without a latency is
    broken: it was not shown to hold.

    Args:
      measured: the candidate.
      baseline: the dense model.
      constraints: the limits.

    Returns:
      The broken constraints in field order; empty when the candidate is feasible.

    Examples:
      >>> from hamjax.autotune.objective import Constraints, Measured, violations
      >>> base = Measured(0.95, 2.0, 4000, 1000)
      >>> [str(v) for v in violations(Measured(0.93, 2.0, 1000, 250), base, Constraints())]
      ['max_accuracy_drop: dropped 2.00 points > 1 allowed']
    """
    found = []

    def over(name, value, limit, message):
        found.append(Violation(message, name=name, excess=(value - limit) / max(abs(limit), 1e-12)))

    def under(name, value, limit, message):
        found.append(Violation(message, name=name, excess=(limit - value) / limit))

    drop = accuracy_drop(measured, baseline)
    if drop > constraints.max_accuracy_drop + 1e-9:
        limit = constraints.max_accuracy_drop
        found.append(
            Violation(
                f"max_accuracy_drop: dropped {drop:.2f} points > {limit:g} allowed",
                name="max_accuracy_drop",
                excess=(drop - limit) / max(limit, 1.0),
            )
        )
    latency, base_latency = measured.latency_ms, baseline.latency_ms
    if constraints.max_latency_ms is not None:
        limit = constraints.max_latency_ms
        if latency is None:
            found.append(
                Violation(
                    f"max_latency_ms: latency not measured (limit {limit:g} ms)", name="max_latency_ms", excess=1.0
                )
            )
        elif latency > limit:
            over("max_latency_ms", latency, limit, f"max_latency_ms: {latency:.3g} ms > {limit:g} ms")
    if constraints.max_size_bytes is not None and measured.size_bytes > constraints.max_size_bytes:
        limit = constraints.max_size_bytes
        over("max_size_bytes", measured.size_bytes, limit, f"max_size_bytes: {measured.size_bytes} bytes > {limit:g}")
    if constraints.min_size_reduction is not None:
        limit = constraints.min_size_reduction
        ratio = baseline.size_bytes / max(measured.size_bytes, 1)
        if ratio < limit:
            under("min_size_reduction", ratio, limit, f"min_size_reduction: {ratio:.2f}x smaller < {limit:g}x")
    if constraints.min_speedup is not None:
        limit = constraints.min_speedup
        if latency is None or base_latency is None:
            found.append(
                Violation(f"min_speedup: latency not measured (limit {limit:g}x)", name="min_speedup", excess=1.0)
            )
        else:
            ratio = base_latency / latency
            if ratio < limit:
                under("min_speedup", ratio, limit, f"min_speedup: {ratio:.2f}x faster < {limit:g}x")
    return tuple(found)


def score(measured: Measured, baseline: Measured, weights: Weights) -> float:
    """The weighted gain of a candidate over the baseline; higher is better, 0 for the baseline itself.

    ``score = (w_s * log(L0 / L) + w_m * log(S0 / S) - w_a * log(2) * drop) / (w_s + w_m + w_a)``

    with ``L`` the latency, ``S`` the stored size, ``0`` the baseline's and
    ``drop`` the accuracy drop in points (:func:`accuracy_drop`): one point
    of accuracy weighs like a 2x change of speed or size. The speed term is
    0 when either latency was not measured. Dividing by the weights' sum
    keeps scores of different weightings on one scale.

    Args:
      measured: the candidate.
      baseline: the dense model.
      weights: the :class:`Weights`.

    Returns:
      A float.

    Examples:
      >>> from hamjax.autotune.objective import Measured, Weights, score
      >>> base = Measured(0.95, 2.0, 4000, 1000)
      >>> round(score(Measured(0.95, 1.0, 4000, 1000), base, Weights(speed=1, memory=0, accuracy=0)), 4)
      0.6931
    """
    speed = 0.0
    if measured.latency_ms is not None and baseline.latency_ms is not None:
        speed = math.log(baseline.latency_ms / measured.latency_ms)
    memory = math.log(max(baseline.size_bytes, 1) / max(measured.size_bytes, 1))
    accuracy = -POINT * accuracy_drop(measured, baseline)
    return (weights.speed * speed + weights.memory * memory + weights.accuracy * accuracy) / weights.total


def penalised(value: float, broken: tuple) -> float:
    """A score with an infeasible candidate pushed down by how far it breaks its constraints.

    ``value - INFEASIBLE_PENALTY * (1 + sum(excess))`` when ``broken`` is not
    empty (the excess summed over the :class:`Violation` items, capped at 10;
    a plain string counts as excess 1), else ``value``: a slightly broken
    candidate ranks above a badly broken one, and both below a feasible one
    of similar score.

    Args:
      value: the score (:func:`score`).
      broken: the violations (:func:`violations`).

    Examples:
      >>> from hamjax.autotune.objective import Violation, penalised
      >>> penalised(0.5, ())
      0.5
      >>> penalised(0.5, (Violation("x", name="max_size_bytes", excess=0.25),))
      -2.0
    """
    if not broken:
        return float(value)
    excess = sum(getattr(v, "excess", 1.0) for v in broken)
    return float(value) - INFEASIBLE_PENALTY * (1.0 + min(max(excess, 0.0), _EXCESS_CAP))
