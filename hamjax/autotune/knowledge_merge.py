"""How the knowledge base merges records into advice, and how it judges a source by what came true.

Every record that bears on a model weighs

    weight = similarity x confidence x trust(source) x 0.5 ** (age / half-life)

(the similarity of its model's signature to the one asked about, the
confidence its source gave it, the trust the knowledge base has in that
source, and its age). Records of one recipe are merged robustly: each result
is the weighted median over the records, every source's records sharing one
source's weight, so neither an outlier nor a source that writes many records
moves it. A record that disagrees with the merged result (its accuracy drop
more than :data:`AGREEMENT_POINTS` away, or the other feasibility) counts a
quarter, and the merged weight grows with the number of agreeing records
(one record alone gets half, three sources of three agreeing records nearly
all): nobody's single outlier is trusted.

A source starts at :data:`DEFAULT_TRUST`. When a measured outcome proves one
of its records wrong (it predicted feasible and the measurement is not, or
the accuracy drop is more than :data:`AGREEMENT_POINTS` off) its trust is
halved (scaled by how similar the models are); a right prediction raises it
by a twentieth of the way to 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

DEFAULT_TRUST = 0.8
MIN_SIMILARITY = 0.5  # records of less alike models neither advise nor are judged
MIN_TRUST = 0.01
AGREEMENT_POINTS = 1.0
DISAGREEING = 0.25  # what a record that disagrees with the merged result counts
INFEASIBLE = 0.1  # what a recipe that broke the constraints keeps of its weight
PER_SOURCE = 3  # agreeing records of one source that add support
LIMITS = (  # (constraint attribute, result key, sign: +1 for an upper limit, -1 for a lower one)
    ("max_accuracy_drop", "accuracy_drop", 1),
    ("max_latency_ms", "latency_ms", 1),
    ("max_size_bytes", "size_bytes", 1),
    ("min_size_reduction", "size_reduction", -1),
    ("min_speedup", "speedup", -1),
)


def signature_of(value: Any):
    """A :class:`~hamjax.autotune.signature.Signature` from itself or its dict.

    Raises:
      ValueError: neither, or a dict that is not a signature.
    """
    from hamjax.autotune import signature

    if isinstance(value, dict):
        return signature.Signature.from_dict(value)
    if not isinstance(value, signature.Signature):
        raise ValueError(f"KnowledgeBase: signature must be a Signature or its dict, got {type(value).__name__}")
    return value


def alike(target, stored: Any) -> float | None:
    """The similarity of ``target`` (a Signature) to a stored signature dict; ``None`` if that cannot be read."""
    from hamjax.autotune.signature import similarity

    try:
        return float(similarity(target, signature_of(stored)))
    except (ValueError, TypeError, KeyError):
        return None  # a signature this hamjax cannot read is no evidence


def limit(constraints: Any, name: str) -> float | None:
    """A constraint's limit, from an ``objective.Constraints``-like object or a dict; ``None`` when unset."""
    value = constraints.get(name) if isinstance(constraints, Mapping) else getattr(constraints, name, None)
    return None if value is None else float(value)


def violations(results: Mapping, constraints: Any) -> tuple[str, ...]:
    """The constraints a results dict breaks; a constraint on a result it lacks is broken (not shown to hold).

    Without constraints, the record's own ``feasible`` decides.

    Args:
      results: a record's results (``accuracy_drop`` in points, ``size_reduction`` and ``speedup`` as ratios).
      constraints: an ``objective.Constraints``-like object (or dict), or ``None``.

    Returns:
      One phrase per broken constraint; empty when feasible.

    Examples:
      >>> violations({"accuracy_drop": 1.5, "size_reduction": 4.2, "feasible": True},
      ...            {"max_accuracy_drop": 1.0, "min_size_reduction": 4.0})
      ('accuracy_drop 1.5 > 1',)
      >>> violations({"accuracy_drop": 0.1, "feasible": False}, None)
      ('infeasible when measured',)
    """
    if constraints is None:
        return () if results.get("feasible") else ("infeasible when measured",)
    broken = []
    for name, key, sign in LIMITS:
        bound = limit(constraints, name)
        if bound is None:
            continue
        value = results.get(key)
        if value is None:
            broken.append(f"{key} unknown (limit {bound:g})")
        elif sign * (float(value) - bound) > 0:
            broken.append(f"{key} {float(value):g} {'>' if sign > 0 else '<'} {bound:g}")
    return tuple(broken)


def record_weight(similarity: float, confidence: float, trust: float, age_seconds: float, half_life_days: float):
    """``similarity x confidence x trust x 0.5 ** (age / half-life)`` (a record from the future counts as new).

    Examples:
      >>> round(record_weight(0.9, 1.0, 0.8, 180 * 86400.0, 180.0), 3)
      0.36
    """
    decay = 0.5 ** (max(age_seconds, 0.0) / (half_life_days * 86400.0))
    return similarity * confidence * trust * decay


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The lower weighted median (the first value whose cumulative weight reaches half the total).

    Examples:
      >>> weighted_median([1.0, 2.0, 100.0], [1.0, 1.0, 0.1])
      2.0
    """
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if total <= 0:
        return pairs[len(pairs) // 2][0]
    running = 0.0
    for value, w in pairs:
        running += w
        if running >= total / 2:
            return value
    return pairs[-1][0]


class Evidence(NamedTuple):
    """One record as merging sees it: its results, source and similarity to the model asked about, and its weight."""

    results: Mapping
    source: str
    similarity: float
    weight: float


class Merged(NamedTuple):
    """A recipe's merged outcome: the robust results, the weight of the advice and why."""

    results: dict
    weight: float
    feasible: bool
    broken: tuple[str, ...]
    reason: str


def _merged_results(evidence: Sequence[Evidence]) -> dict:
    per_source: dict[str, int] = {}
    for e in evidence:
        per_source[e.source] = per_source.get(e.source, 0) + 1
    merged: dict[str, Any] = {}
    for key in ("accuracy_drop", "latency_ms", "size_bytes", "size_reduction", "speedup", "score"):
        rows = [
            (float(e.results[key]), e.weight / per_source[e.source]) for e in evidence if e.results.get(key) is not None
        ]
        if rows:
            merged[key] = weighted_median([v for v, _ in rows], [w for _, w in rows])
    votes = sum((1 if e.results.get("feasible") else -1) * e.weight / per_source[e.source] for e in evidence)
    merged["feasible"] = votes > 0
    return merged


def merge(evidence: Sequence[Evidence], constraints: Any = None) -> Merged:
    """Merge the records of one recipe into one outcome (see the module docstring).

    Args:
      evidence: the recipe's records, at least one.
      constraints: what the outcome is judged feasible against; ``None``: the records' own verdicts.

    Returns:
      A :class:`Merged`; its weight is in [0, 1].

    Examples:
      >>> ok = {"accuracy_drop": 0.3, "size_reduction": 4.1, "feasible": True}
      >>> bad = {"accuracy_drop": 9.0, "size_reduction": 4.1, "feasible": False}
      >>> m = merge([Evidence(ok, "a", 1.0, 1.0), Evidence(ok, "b", 1.0, 1.0), Evidence(bad, "c", 1.0, 1.0)])
      >>> m.results["accuracy_drop"], m.feasible, round(m.weight, 3)
      (0.3, True, 0.562)
      >>> m.reason
      '3 records from 3 sources (mean similarity 1.00, 2 agree): accuracy drop 0.30 points, 4.1x smaller; feasible'
    """
    merged = _merged_results(evidence)
    broken = violations(merged, constraints)
    feasible = not broken
    agreeing: dict[str, int] = {}
    total = 0.0
    for e in evidence:
        drop = e.results.get("accuracy_drop")
        close = drop is None or abs(float(drop) - merged.get("accuracy_drop", float(drop))) <= AGREEMENT_POINTS
        agrees = close and (not violations(e.results, constraints)) == feasible
        if agrees:
            agreeing[e.source] = agreeing.get(e.source, 0) + 1
        total += e.weight * (1.0 if agrees else DISAGREEING)
    support = 1.0 - 0.5 ** sum(min(n, PER_SOURCE) for n in agreeing.values())
    weight = min(1.0, total / len(evidence)) * support * (1.0 if feasible else INFEASIBLE)
    sources = len({e.source for e in evidence})
    mean_similarity = sum(e.similarity for e in evidence) / len(evidence)
    facts = [f"accuracy drop {merged['accuracy_drop']:.2f} points"] if "accuracy_drop" in merged else []
    if "size_reduction" in merged:
        facts.append(f"{merged['size_reduction']:.2g}x smaller")
    if "speedup" in merged:
        facts.append(f"{merged['speedup']:.2g}x faster")
    verdict = "feasible" if feasible else "infeasible: " + ", ".join(broken)
    reason = (
        f"{len(evidence)} record{'s' * (len(evidence) != 1)} from {sources} source{'s' * (sources != 1)} "
        f"(mean similarity {mean_similarity:.2f}, {sum(agreeing.values())} agree): {', '.join(facts)}; {verdict}"
    )
    return Merged(merged, weight, feasible, broken, reason)


def advise(scored, trusts: Mapping[str, float], constraints: Any, *, k: int, age, half_life_days: float) -> list:
    """The ``k`` best recipes among stored rows: merged per recipe key, feasible ones first, then by weight.

    Args:
      scored: ``(similarity, rows)`` per signature, each row a stored record
        (``recipe_key``, ``recipe``, ``results``, ``source``, ``confidence``, ``time``).
      trusts: the trust in each judged source (others: :data:`DEFAULT_TRUST`).
      constraints: as for :func:`merge`.
      k: how many recipes.
      age: the age in seconds of a record made at a given time.
      half_life_days: the half-life of a record's weight.

    Returns:
      ``(raw recipe dict, weight, reason)`` triples; each recipe as its most weighty record wrote it.
    """
    groups: dict[str, list[tuple[dict, Evidence]]] = {}
    for similarity, rows in scored:
        for row in rows:
            trust = trusts.get(row["source"], DEFAULT_TRUST)
            weight = record_weight(similarity, row["confidence"], trust, age(row["time"]), half_life_days)
            groups.setdefault(row["recipe_key"], []).append(
                (row, Evidence(row["results"], row["source"], similarity, weight))
            )
    ranked = []
    for entries in groups.values():
        merged = merge([e for _, e in entries], constraints)
        strongest = max(entries, key=lambda pair: (pair[1].weight, pair[0]["time"]))[0]
        ranked.append((not merged.feasible, -merged.weight, strongest["recipe"], merged))
    ranked.sort(key=lambda row: row[:2])
    return [(recipe, merged.weight, merged.reason) for _, _, recipe, merged in ranked[:k]]


def wrong_prediction(predicted: Mapping, measured: Mapping, constraints: Any = None) -> str | None:
    """Why a record's results proved wrong against a measured outcome, or ``None`` when they held.

    Args:
      predicted: the record's results.
      measured: the results measured now (same keys).
      constraints: the limits both are judged against; ``None``: their own ``feasible``.

    Returns:
      A phrase, or ``None``.

    Examples:
      >>> wrong_prediction({"accuracy_drop": 0.2, "feasible": True}, {"accuracy_drop": 2.5, "feasible": False})
      'predicted feasible, measured infeasible (infeasible when measured)'
      >>> wrong_prediction({"accuracy_drop": 0.2, "feasible": True}, {"accuracy_drop": 0.9, "feasible": True}) is None
      True
    """
    now = violations(measured, constraints)
    if not violations(predicted, constraints) and now:
        return f"predicted feasible, measured infeasible ({', '.join(now)})"
    before, after = predicted.get("accuracy_drop"), measured.get("accuracy_drop")
    if before is not None and after is not None and abs(float(before) - float(after)) > AGREEMENT_POINTS:
        return f"accuracy drop predicted {float(before):.2f} points, measured {float(after):.2f}"
    return None


def updated_trust(trust: float, wrong: bool, similarity: float = 1.0) -> float:
    """A source's trust after one of its records was judged (halved when wrong, raised slowly when right).

    Args:
      trust: the trust so far, in (0, 1].
      wrong: whether the record proved wrong.
      similarity: how similar the judged model is to the record's (a distant model's outcome counts less).

    Returns:
      The new trust, in [:data:`MIN_TRUST`, 1].

    Examples:
      >>> updated_trust(0.8, True), round(updated_trust(0.8, False), 3)
      (0.4, 0.81)
    """
    similarity = min(max(float(similarity), 0.0), 1.0)
    if wrong:
        return max(MIN_TRUST, trust * 0.5**similarity)
    return min(1.0, trust + similarity * (1.0 - trust) / 20.0)


def measured_results(measured: Any, baseline: Any, constraints: Any = None) -> dict:
    """A results dict from a candidate's measurement and the dense baseline's (``objective.Measured``-like).

    Accuracy drop in points (accuracies are fractions), size reduction and
    speed-up as ratios baseline / candidate (speed-up only where both have a
    latency); ``feasible`` under ``constraints`` (``True`` without them).

    Examples:
      >>> from collections import namedtuple
      >>> M = namedtuple("M", "accuracy latency_ms size_bytes params")
      >>> r = measured_results(M(0.945, 1.0, 1000, 10), M(0.95, 2.0, 4000, 40), {"max_accuracy_drop": 1.0})
      >>> round(r["accuracy_drop"], 6), r["size_reduction"], r["speedup"], r["feasible"]
      (0.5, 4.0, 2.0, True)
    """
    results: dict[str, Any] = {
        "accuracy_drop": 100.0 * (float(baseline.accuracy) - float(measured.accuracy)),
        "size_bytes": int(measured.size_bytes),
        "size_reduction": float(baseline.size_bytes) / max(float(measured.size_bytes), 1.0),
    }
    if measured.latency_ms is not None:
        results["latency_ms"] = float(measured.latency_ms)
        if baseline.latency_ms is not None and measured.latency_ms > 0:
            results["speedup"] = float(baseline.latency_ms) / float(measured.latency_ms)
    results["feasible"] = constraints is None or not violations(results, constraints)
    if not all(math.isfinite(v) for v in results.values() if not isinstance(v, bool)):
        raise ValueError(f"measured_results: measured and baseline must give finite results, got {results!r}")
    return results
