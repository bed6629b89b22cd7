"""autotune.loop: screenings, promotion (slack, learned recovery, rank), keeping the best's files, failed candidates.

The evaluator and the strategy are fakes (no training): each recipe's
numbers come from a table, so every decision of :class:`Loop` is checked on
known inputs.
"""

import dataclasses
import types

import pytest

from hamjax import recipes
from hamjax.autotune import loop, objective, strategies

BASE = objective.Measured(accuracy=0.90, latency_ms=2.0, size_bytes=8000, params=2000)
LIMITS = objective.Constraints(max_accuracy_drop=1.0, min_size_reduction=2.0)


def _recipe(name: str, **quantize) -> recipes.Recipe:
    steps = [{"kind": "quantize", **quantize}, {"kind": "export", "precisions": "int8", "tensorrt": False}]
    return recipes.validate({"name": name, "steps": steps})


class FakeEvaluator:
    """Numbers by recipe name and fidelity: ``table[name] = {"cheap": Measured | Exception, "full": ...}``."""

    def __init__(self, table):
        self.table, self.runs, self.discarded = table, [], []

    def baseline(self):
        return types.SimpleNamespace(measured=BASE)

    def run(self, recipe, fidelity="full"):
        self.runs.append((recipe.name, fidelity))
        value = self.table[recipe.name][fidelity]
        if isinstance(value, Exception):
            raise value
        return types.SimpleNamespace(measured=value, name=f"{recipe.name}-{fidelity}-{len(self.runs)}")

    def discard(self, outcome):
        self.discarded.append(outcome.name)


class FakeStrategy:
    """Proposes the given recipes in order, with a reason; remembers what it observed."""

    name = "fake"

    def __init__(self, recipes_in_order):
        self.queue, self.observed, self.last_reason = list(recipes_in_order), [], ""

    def propose(self, history):
        if not self.queue:
            raise strategies.Exhausted("nothing left")
        recipe = self.queue.pop(0)
        self.last_reason = f"because {recipe.name}"
        return recipe

    def observe(self, evaluation):
        self.observed.append(evaluation)


def _measured(drop_points: float, size: int, latency=None):
    return objective.Measured(BASE.accuracy - drop_points / 100.0, latency, size, 500)


def _loop(table, order, *, screen_limit=10, constraints=LIMITS):
    evaluator, strategy = FakeEvaluator(table), FakeStrategy([_recipe(n) for n in order])
    lines = []
    state = loop.Loop(
        evaluator,
        {"fake": strategy},
        constraints,
        objective.Weights(),
        seed=0,
        selection_method="tournament",
        screen_limit=screen_limit,
        echo=lines.append,
    )
    return state, evaluator, strategy, lines


def _steps(state, n):
    for i in range(1, n + 1):
        state.step(i)


def test_screenings_stop_at_the_limit_then_candidates_get_a_full_evaluation_at_once():
    table = {n: {"cheap": _measured(0.2, 3000), "full": _measured(0.2, 3000, 1.0)} for n in "abc"}
    state, evaluator, strategy, lines = _loop(table, "abc", screen_limit=1)
    _steps(state, 3)
    assert evaluator.runs == [("a", "cheap"), ("a", "full"), ("b", "full"), ("c", "full")]
    assert state.screenings == 1 and state.full == 3
    assert [e.fidelity for e in state.history] == ["cheap", "full", "full", "full"]
    assert len(strategy.observed) == 4  # every strategy observes every evaluation
    assert lines == state.log and len(lines) == 3
    assert "[1] fake proposes quantize() > export(precisions=int8, tensorrt=False): because a" in lines[0]
    assert "cheap:" in lines[0] and "promoted -> full:" in lines[0] and "feasible, score" in lines[0]
    assert "cheap" not in lines[1] and "feasible" in lines[1]


@pytest.mark.parametrize(("drop", "promoted"), [(1.5, True), (1.99, True), (2.5, False)])
def test_a_screening_within_the_promotion_slack_earns_a_full_evaluation(drop, promoted):
    assert loop.PROMOTE_SLACK == 1.0
    table = {"a": {"cheap": _measured(drop, 3000), "full": _measured(0.5, 3000, 1.0)}}
    state, evaluator, _, lines = _loop(table, "a")
    state.step(1)
    assert (("a", "full") in evaluator.runs) is promoted
    if not promoted:
        assert "rejected without a full evaluation: max_accuracy_drop" in lines[0]
        assert state.full == 0 and evaluator.discarded  # the screening's files go


def test_promising_ignores_latency_and_speed_a_screening_cannot_measure():
    tight = dataclasses.replace(LIMITS, max_latency_ms=0.001, min_speedup=100.0)
    ok, why = loop.promising(_measured(0.5, 3000), BASE, tight)
    assert ok and why == ""
    ok, why = loop.promising(_measured(0.5, 5000), BASE, tight)
    assert not ok and why.startswith("min_size_reduction")


def test_full_evaluations_teach_how_much_a_screening_understates_accuracy():
    table = {
        "b": {"cheap": _measured(21.0, 3000), "full": _measured(0.8, 3000, 1.0)},  # 21 - 19.5 <= 1 + slack
        "c": {"cheap": _measured(23.0, 3000), "full": _measured(2.0, 3000, 1.0)},  # 23 - 19.5 > 1 + slack
    }
    state, evaluator, _, lines = _loop(table, "bc")
    assert state.recovery() == 0.0
    state.pairs.append((0.70, 0.895))  # a screening 20 points down ended 0.5 down after its full finetune
    assert state.recovery() == pytest.approx(19.5)
    _steps(state, 2)
    assert ("b", "full") in evaluator.runs and "won back 19.5 pt" in lines[0]
    assert ("c", "full") not in evaluator.runs and "rejected without a full evaluation" in lines[1]
    assert state.pairs[-1] == pytest.approx((0.69, 0.892))  # b's pair joins: (19.5 + 20.2) / 2 won back now
    assert state.recovery() == pytest.approx(19.85)


def test_a_screening_in_the_top_third_of_those_meeting_the_size_limits_is_promoted_by_rank():
    assert loop.RANK_ETA == 3
    table = {
        "a": {"cheap": _measured(30.0, 3000)},
        "b": {"cheap": _measured(25.0, 3000), "full": _measured(24.0, 3000, 1.0)},  # wins back only 1 point
        "e": {"cheap": _measured(0.1, 5000)},  # accurate but too large: neither counted nor waiting
        "c": {"cheap": _measured(40.0, 3000)},  # the third sized screening: now the best of three (b) goes first
        "d": {"cheap": _measured(20.0, 3000), "full": _measured(0.9, 3000, 1.0)},  # best of four: top 4 // 3
    }
    state, evaluator, _, lines = _loop(table, "abecd")
    _steps(state, 7)
    assert [r for r in evaluator.runs if r[1] == "full"] == [("b", "full"), ("d", "full")]
    assert state.screened == pytest.approx([0.6, 0.65, 0.5, 0.7])
    assert "waits for its rank" in lines[0] and "min_size_reduction" in lines[2] and "waits" not in lines[2]
    assert lines[4].startswith("[5] fake's quantize() > export(")
    assert "screened earlier" in lines[4] and "promoted by rank (top 1/3 of 3 screenings)" in lines[4]
    assert "promoted by rank (top 1/3 of 4 screenings)" in lines[6] and "feasible" in lines[6]
    assert [entry[1].name for entry in state.pool] == ["a", "c"]
    with pytest.raises(strategies.Exhausted):  # every proposal made; a and c wait below the bar
        state.step(8)


def test_once_screenings_are_spent_the_best_waiting_one_goes_before_new_proposals():
    table = {
        "a": {"cheap": _measured(30.0, 3000), "full": _measured(0.5, 3000, 1.0)},
        "b": {"full": _measured(0.2, 3000, 1.0)},
    }
    state, evaluator, _, lines = _loop(table, "ab", screen_limit=1)
    _steps(state, 3)
    assert evaluator.runs == [("a", "cheap"), ("a", "full"), ("b", "full")]  # ceil(1 / 3) = the top one
    assert "screened earlier" in lines[1] and "feasible" in lines[1]


def test_keep_holds_only_the_best_feasible_full_evaluation_and_discards_the_rest():
    table = {
        "a": {"full": _measured(0.5, 3000, 1.0)},
        "b": {"full": _measured(0.1, 2000, 1.0)},  # better: a's files go
        "c": {"full": _measured(0.9, 3900, 1.5)},  # worse: its own files go
        "d": {"full": _measured(5.0, 1000, 1.0)},  # infeasible: its own files go
    }
    state, evaluator, _, lines = _loop(table, "abcd", screen_limit=0)
    _steps(state, 4)
    best, outcome = state.best
    assert best.recipe.name == "b" and outcome.name == "b-full-2"
    assert evaluator.discarded == ["a-full-1", "c-full-3", "d-full-4"]
    assert "max_accuracy_drop" in lines[3]
    assert state.history.best().recipe.name == "b"


def test_a_candidate_that_fails_is_recorded_as_failed_and_the_run_goes_on():
    table = {
        "a": {"cheap": ValueError("prune: no channel group\nsecond line")},
        "b": {"full": RuntimeError("export broke")},
        "c": {"full": _measured(0.2, 3000, 1.0)},
    }
    state, evaluator, strategy, lines = _loop(table, "abc", screen_limit=1)
    _steps(state, 3)
    first, second, third = state.history
    assert first.violations == ("failed: prune: no channel group",) and first.score == loop.FAILED_SCORE
    assert "rejected: failed: prune: no channel group" in lines[0] and ("a", "full") not in evaluator.runs
    assert second.fidelity == "full" and second.violations == ("failed: export broke",)
    assert "full: failed: export broke" in lines[1]
    assert state.full == 2 and state.best[0].recipe.name == "c" and third.violations == ()
    assert strategy.observed[0].violations[0].startswith("failed")


def test_an_exhausted_strategy_raises_to_the_caller():
    state, *_ = _loop({}, "")
    with pytest.raises(strategies.Exhausted):
        state.step(1)


def test_results_of_gives_a_knowledge_base_record_its_ratios_and_feasibility():
    results = loop.results_of(_measured(0.5, 2000, 0.5), BASE, LIMITS, score=0.7, violations=())
    assert results["accuracy_drop"] == pytest.approx(0.5)
    assert results["size_reduction"] == 4.0 and results["speedup"] == 4.0
    assert results["feasible"] is True and results["score"] == 0.7
    assert results["constraints"] == {"max_accuracy_drop": 1.0, "min_size_reduction": 2.0}
    cheap = loop.results_of(_measured(0.5, 2000), BASE, LIMITS, score=0.1, violations=("x",))
    assert cheap["speedup"] is None and cheap["feasible"] is False


def test_describe_and_summary_write_one_line_each():
    text = loop.describe(_measured(0.5, 2000, 1.0), BASE)
    assert text == "accuracy 0.8950 (drop +0.50 pt), size 2000 B (4.00x smaller), latency 1.000 ms (2.00x faster)"
    assert "latency" not in loop.describe(_measured(0.5, 2000), BASE)
    assert loop.summary(_recipe("r", bits=4)) == "quantize(bits=4) > export(precisions=int8, tensorrt=False)"
