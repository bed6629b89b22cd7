import collections

import numpy as np
import pytest

from hamjax.autotune import objective, selection, strategies
from hamjax.autotune.space import RecipeSpace

RECIPE = RecipeSpace("mlp").sample(np.random.default_rng(0))
M = objective.Measured(0.9, 1.0, 100, 10)


def ev(score, violations=()):
    return strategies.Evaluation(RECIPE, M, score, violations, "full", 0.0, "x")


HISTORIES = {"a": [ev(0.1)], "b": [ev(0.5), ev(0.2)], "c": [ev(0.9)], "d": [ev(3.0, ("max_size_bytes: x",))]}


def counts(method, n=3000):
    rng = np.random.default_rng(0)
    return collections.Counter(selection.select(HISTORIES, method, rng) for _ in range(n))


def test_untried_strategies_go_first_in_order():
    assert selection.select({"a": [ev(1.0)], "b": [], "c": []}, "roulette", np.random.default_rng(0)) == "b"


def test_fitness_is_the_best_penalised_reward():
    assert selection.fitness(HISTORIES["b"]) == 0.5
    assert selection.fitness(HISTORIES["d"]) == pytest.approx(3.0 - 2 * objective.INFEASIBLE_PENALTY)


def test_tournament_frequencies():
    # fitness order: c (0.9) > b (0.5) > a (0.1) > d (-1.0); with pairs of 4, the best wins 3 of its 6 pairs
    c = counts("tournament")
    assert c["c"] / 3000 == pytest.approx(0.5, abs=0.04)
    assert c["d"] == 0
    assert c["c"] > c["b"] > c["a"] > 0


def test_rank_frequencies():
    c = counts("rank")
    for name, rank in (("c", 4), ("b", 3), ("a", 2), ("d", 1)):
        assert c[name] / 3000 == pytest.approx(rank / 10, abs=0.04)


def test_roulette_frequencies_follow_fitness_gaps():
    c = counts("roulette")
    spread = 0.9 - -1.0
    weights = {n: selection.fitness(h) + 1.0 + 0.05 * spread for n, h in HISTORIES.items()}
    total = sum(weights.values())
    for name, w in weights.items():
        assert c[name] / 3000 == pytest.approx(w / total, abs=0.04)


def test_deterministic_given_the_generator():
    a = [selection.select(HISTORIES, "roulette", g) for g in [np.random.default_rng(7)] for _ in range(20)]
    b = [selection.select(HISTORIES, "roulette", g) for g in [np.random.default_rng(7)] for _ in range(20)]
    assert a == b


def test_refuses():
    with pytest.raises(ValueError, match="select: method must be one of"):
        selection.select(HISTORIES, "elitist", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one strategy"):
        selection.select({}, "rank", np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        selection.select(HISTORIES, "rank", 3)
