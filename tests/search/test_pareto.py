import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hamjax.search import engine, pareto, proposals

INF, NAN = float("inf"), float("nan")


def test_engine_uses_these_functions():
    assert engine.pareto_front is pareto.pareto_front and proposals.nondominated_rank is pareto.nondominated_rank


def test_pareto_front_keeps_the_non_dominated():
    acc = [0.9, 0.8, 0.95, 0.85, float("-inf"), 0.95]
    size = [100, 50, 300, 200, 10, 400]
    assert pareto.pareto_front(acc, size) == [1, 0, 2]
    with pytest.raises(ValueError, match="one length"):
        pareto.pareto_front([0.1], [1, 2])


def test_pareto_front_over_three_objectives():
    acc = [0.9, 0.9, 0.8, 0.95, 0.9, 0.85, NAN]
    size = [100, 100, 50, 400, 100, 500, 1]
    latency = [2.0, 1.0, 1.0, 5.0, 1.0, 0.5, 0.1]
    # 0 is dominated by 1, 4 repeats 1; 5 is on the front for its latency alone; 6 diverged
    assert pareto.pareto_front(acc, size, latency) == [2, 1, 3, 5]
    assert pareto.pareto_front(acc, size) == [2, 0, 3]  # 0, 1 and 4 tie: the first stays
    assert pareto.pareto_front(acc) == [3]
    assert pareto.nondominated_rank(acc, size, latency).tolist() == [1, 0, 0, 0, 0, 0, 2]
    with pytest.raises(ValueError, match=r"costs\[1\] holds NaN or None"):
        pareto.pareto_front([0.5, 0.6], [1, 2], [1.0, None])


def _dominates(a, b):
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def _vectors(acc, costs):
    return [(-a, *c) for a, c in zip(acc, zip(*costs, strict=True) if costs else [()] * len(acc), strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_pareto_front_and_ranks_match_brute_force(data):
    n = data.draw(st.integers(0, 10), label="n")
    acc = data.draw(st.lists(st.sampled_from([0.0, 0.5, 0.75, 1.0, -INF, INF, NAN]), min_size=n, max_size=n))
    costs = [
        data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)) for _ in range(data.draw(st.integers(0, 2)))
    ]
    vectors, finite = _vectors(acc, costs), [math.isfinite(a) for a in acc]
    dominated = [any(finite[j] and _dominates(vectors[j], vectors[i]) for j in range(n)) for i in range(n)]
    repeated = [any(finite[j] and vectors[j] == vectors[i] for j in range(i)) for i in range(n)]
    front = pareto.pareto_front(acc, *costs)
    assert sorted(front) == [i for i in range(n) if finite[i] and not dominated[i] and not repeated[i]]
    keys = [(*(c[i] for c in costs), -acc[i], i) for i in front]
    assert keys == sorted(keys)
    # NSGA-II ranks: one past the deepest rank dominating you; diverged after every finite rank
    rank = pareto.nondominated_rank(acc, *costs).tolist()
    for i in range(n):
        if finite[i]:
            above = [rank[j] for j in range(n) if finite[j] and _dominates(vectors[j], vectors[i])]
            assert rank[i] == (max(above) + 1 if above else 0)
    last = max([r for r, f in zip(rank, finite, strict=True) if f], default=-1) + 1
    assert all(r == last for r, f in zip(rank, finite, strict=True) if not f)
