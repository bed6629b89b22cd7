"""Merging records into advice, and judging sources: medians, support, feasibility, trust."""

import collections

import pytest

from hamjax.autotune import knowledge_merge, objective

OK = {"accuracy_drop": 0.3, "size_reduction": 4.0, "speedup": 2.0, "latency_ms": 1.0, "feasible": True}


def _evidence(results=OK, source="a", similarity=1.0, weight=1.0):
    return knowledge_merge.Evidence(results, source, similarity, weight)


def test_violations_read_constraints_objects_and_dicts():
    strict = objective.Constraints(max_accuracy_drop=0.2, min_size_reduction=5.0, min_speedup=3.0, max_latency_ms=0.5)
    assert knowledge_merge.violations(OK, strict) == (
        "accuracy_drop 0.3 > 0.2",
        "latency_ms 1 > 0.5",
        "size_reduction 4 < 5",
        "speedup 2 < 3",
    )
    assert knowledge_merge.violations(OK, objective.Constraints()) == ()
    assert knowledge_merge.violations(OK, {"max_size_bytes": 100}) == ("size_bytes unknown (limit 100)",)
    assert knowledge_merge.violations({**OK, "feasible": False}, None) == ("infeasible when measured",)


def test_weighted_median_and_record_weight():
    assert knowledge_merge.weighted_median([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 2.0
    assert knowledge_merge.weighted_median([1.0, 50.0], [0.1, 1.0]) == 50.0
    assert knowledge_merge.weighted_median([1.0, 50.0], [0.0, 0.0]) == 50.0  # no weight at all: the plain middle
    day = 86400.0
    assert knowledge_merge.record_weight(1.0, 1.0, 1.0, 30 * day, 30.0) == pytest.approx(0.5)
    assert knowledge_merge.record_weight(0.5, 0.5, 0.5, -day, 30.0) == 0.125  # from the future: counts as new


def test_a_source_writing_many_records_counts_as_one():
    noisy = [_evidence({**OK, "accuracy_drop": 6.0, "feasible": False}, "spam") for _ in range(10)]
    merged = knowledge_merge.merge([*noisy, _evidence(source="b"), _evidence(source="c")])
    assert merged.results["accuracy_drop"] == 0.3 and merged.feasible
    assert merged.reason.startswith("12 records from 3 sources (mean similarity 1.00, 2 agree)")


def test_support_grows_with_agreeing_records_up_to_three_per_source():
    weights = [knowledge_merge.merge([_evidence(source="a")] * n).weight for n in (1, 2, 3, 6)]
    assert weights == [0.5, 0.75, 0.875, 0.875]
    assert knowledge_merge.merge([_evidence(source=s) for s in "abcdef"]).weight == pytest.approx(1 - 0.5**6)


def test_merge_judges_feasibility_against_the_constraints():
    merged = knowledge_merge.merge([_evidence(source=s) for s in "ab"], {"min_size_reduction": 8.0})
    assert not merged.feasible and merged.broken == ("size_reduction 4 < 8",)
    assert merged.weight == pytest.approx(0.75 * knowledge_merge.INFEASIBLE)
    assert merged.reason.endswith("4x smaller, 2x faster; infeasible: size_reduction 4 < 8")


def test_advise_groups_by_recipe_and_ranks_feasible_first():
    def row(key, drop, source):
        results = {**OK, "accuracy_drop": drop}
        return {"recipe_key": key, "recipe": {"steps": [{"kind": key}]}, "results": results, "source": source,
                "confidence": 1.0, "time": 0.0}  # fmt: skip

    scored = [(1.0, [row("a", 3.0, "x"), row("b", 0.1, "x")]), (0.6, [row("b", 0.2, "y")])]
    advice = knowledge_merge.advise(
        scored, {"x": 0.5}, {"max_accuracy_drop": 1.0}, k=5, age=lambda t: 0.0, half_life_days=1.0
    )
    assert [recipe["steps"][0]["kind"] for recipe, _, _ in advice] == ["b", "a"]
    assert advice[0][1] == pytest.approx((0.5 + 0.6 * 0.8) / 2 * 0.75)
    assert advice[0][0] == {"steps": [{"kind": "b"}]}


def test_wrong_prediction_and_trust():
    assert knowledge_merge.wrong_prediction(OK, {**OK, "accuracy_drop": 1.2}) is None  # within a point
    assert (
        knowledge_merge.wrong_prediction(OK, {**OK, "accuracy_drop": 1.5})
        == "accuracy drop predicted 0.30 points, measured 1.50"
    )
    limits = {"max_latency_ms": 2.0}
    assert knowledge_merge.wrong_prediction(OK, {**OK, "latency_ms": 3.0}, limits) == (
        "predicted feasible, measured infeasible (latency_ms 3 > 2)"
    )
    assert knowledge_merge.wrong_prediction({**OK, "feasible": False}, {**OK, "feasible": False}) is None
    trust = 1.0
    for _ in range(20):
        trust = knowledge_merge.updated_trust(trust, True)
    assert trust == knowledge_merge.MIN_TRUST
    assert knowledge_merge.updated_trust(0.5, True, similarity=0.0) == 0.5  # an unrelated model proves nothing
    assert knowledge_merge.updated_trust(0.99, False) <= 1.0 and knowledge_merge.updated_trust(1.0, False) == 1.0


def test_measured_results_from_objective_measurements():
    base = objective.Measured(accuracy=0.95, latency_ms=2.0, size_bytes=4000, params=100)
    no_latency = objective.Measured(accuracy=0.95, latency_ms=None, size_bytes=500, params=10)
    results = knowledge_merge.measured_results(no_latency, base, objective.Constraints(min_speedup=2.0))
    assert results == {"accuracy_drop": 0.0, "size_bytes": 500, "size_reduction": 8.0, "feasible": False}
    assert knowledge_merge.measured_results(no_latency, base)["feasible"]
    nan = collections.namedtuple("M", "accuracy latency_ms size_bytes params")(float("nan"), 1.0, 10, 1)
    with pytest.raises(ValueError, match="measured_results: measured and baseline must give finite results"):
        knowledge_merge.measured_results(nan, base)
