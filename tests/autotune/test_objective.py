import math

import pytest

from hamjax.autotune import objective
from hamjax.autotune.objective import Constraints, Measured, Weights

BASE = Measured(accuracy=0.95, latency_ms=2.0, size_bytes=4000, params=1000)


def test_score_formula_and_baseline_zero():
    assert objective.score(BASE, BASE, Weights()) == 0.0
    m = Measured(0.94, 0.5, 500, 100)
    expected = (math.log(4) + math.log(8) - math.log(2) * 1.0) / 3
    assert objective.score(m, BASE, Weights()) == pytest.approx(expected)
    # the weights' sum divides: scaling them does not change the score
    assert objective.score(m, BASE, Weights(2, 2, 2)) == pytest.approx(expected)
    assert objective.score(m, BASE, Weights(speed=1, memory=0, accuracy=0)) == pytest.approx(math.log(4))
    # one point of accuracy weighs like a 2x size change
    worse = Measured(0.94, 2.0, 2000, 1000)
    assert objective.score(worse, BASE, Weights(speed=0)) == pytest.approx(0.0, abs=1e-9)
    # no latency: the speed term is 0
    assert objective.score(Measured(0.95, None, 4000, 1), BASE, Weights()) == 0.0


def test_violations_name_each_constraint_with_value_and_limit():
    c = Constraints(max_accuracy_drop=0.5, max_latency_ms=1.0, max_size_bytes=1000, min_size_reduction=8, min_speedup=4)
    found = objective.violations(Measured(0.94, 1.5, 2000, 10), BASE, c)
    names = [v.name for v in found]
    assert names == ["max_accuracy_drop", "max_latency_ms", "max_size_bytes", "min_size_reduction", "min_speedup"]
    assert "1.00 points > 0.5" in found[0]
    assert found[2].excess == pytest.approx(1.0)
    assert found[3].excess == pytest.approx((8 - 2) / 8)
    assert objective.violations(Measured(0.95, 0.4, 400, 10), BASE, c) == ()


def test_only_accuracy_constraint_and_missing_latency():
    assert objective.violations(Measured(0.945, None, 4000, 1), BASE, Constraints()) == ()
    (v,) = objective.violations(Measured(0.95, None, 400, 1), BASE, Constraints(min_speedup=2.0))
    assert v.name == "min_speedup" and "not measured" in v


def test_penalised_orders_by_excess():
    small = objective.Violation("a", name="max_size_bytes", excess=0.1)
    big = objective.Violation("b", name="max_size_bytes", excess=3.0)
    assert objective.penalised(0.0, ()) > objective.penalised(1.0, (small,)) > objective.penalised(1.0, (big,))
    assert objective.penalised(0.0, ("failed: x",)) == -2 * objective.INFEASIBLE_PENALTY


@pytest.mark.parametrize(
    ("kw", "phrase"),
    [
        ({"max_accuracy_drop": -1}, "max_accuracy_drop must be a finite number >= 0"),
        ({"max_latency_ms": 0}, "max_latency_ms must be a finite number > 0"),
        ({"min_speedup": math.nan}, "min_speedup"),
        ({"max_size_bytes": "1k"}, "max_size_bytes"),
    ],
)
def test_constraints_refuse(kw, phrase):
    with pytest.raises(ValueError, match=phrase):
        Constraints(**kw)


def test_weights_refuse_negative_and_zero():
    with pytest.raises(ValueError, match="Weights: memory must be a finite number >= 0, got -1"):
        Weights(memory=-1)
    with pytest.raises(ValueError, match="must not all be zero"):
        Weights(0, 0, 0)
