"""Tests for hamjax.search.proposals: the search config, tournament fitness and the proposals of each method."""

import dataclasses
import importlib.util
import math

import numpy as np
import pytest
from searches import INF, LATENCY, NAN, SN, made_history, search_config

from hamjax.search import nas, proposals, selection


def test_pareto_tournament_prefers_the_non_dominated():
    alive = [proposals.Candidate(0, {}, a, p, "") for a, p in [(0.9, 1000), (0.9, 100), (0.5, 50), (-INF, 10)]]
    by_accuracy = proposals.tournament_fitness(alive, search_config())
    by_pareto = proposals.tournament_fitness(alive, search_config(selection="pareto"))
    # by accuracy the older of the two 0.9s wins; by rank 1 dominates 0, and 2 (rank 0) beats 0 (rank 1)
    assert selection.elite(by_accuracy, 4).tolist() == [0, 1, 2, 3]
    assert selection.elite(by_pareto, 4).tolist() == [1, 2, 0, 3]
    # the diverged member, though the smallest, wins only a tournament it alone entered
    chance = selection.probabilities(by_pareto, "tournament", k=4)
    assert chance[3] == pytest.approx(0.25**4) and chance[2] > chance[0]
    # with latency as well, 0 (the fastest) is no longer dominated: all finite members share rank 0
    alive = [dataclasses.replace(c, latency_ms=ms) for c, ms in zip(alive, [1.0, 3.0, 2.0, 0.1], strict=True)]
    by_all = proposals.tournament_fitness(alive, search_config(selection="pareto", objectives=LATENCY))
    assert selection.elite(by_all, 4).tolist() == [0, 1, 2, 3]


def test_pareto_tournament_on_accuracy_alone_is_the_accuracy_tournament():
    history = made_history(6, accuracies=[0.1, 0.2, 0.5, 0.7, 0.7, -INF])  # the last four are the population
    space = nas.space(SN)
    one, plain = search_config(selection="pareto", objectives=("accuracy",)), search_config()
    alive = [dataclasses.replace(c, accuracy=NAN) if i == 1 else c for i, c in enumerate(history[2:])]
    np.testing.assert_array_equal(
        selection.elite(proposals.tournament_fitness(alive, one), 4),
        selection.elite(proposals.tournament_fitness(alive, plain), 4),
    )
    for generation in (1, 2):
        a, b = proposals.propose(space, history, one, generation), proposals.propose(space, history, plain, generation)
        for name in space.names:
            np.testing.assert_array_equal(a[name], b[name])


def test_multi_objective_bayesian_proposes_valid_genomes(monkeypatch):
    import optuna

    studies = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(create(**kw)) or studies[-1])
    space, history = nas.space(SN), made_history(10)
    config = search_config(method="bayesian", selection="pareto", objectives=LATENCY)
    batch = proposals.propose(space, history, config, 3)
    space.validate(batch)
    for i in range(config.population_size):
        values = nas.decode(SN, {n: batch[n][i] for n in space.names})
        assert nas.param_count(SN, values) > 0
    again = proposals.propose(space, history, config, 3)
    assert all(np.array_equal(batch[n], again[n]) for n in space.names)
    study = studies[0]
    d = optuna.study.StudyDirection
    assert study.directions == [d.MAXIMIZE, d.MINIMIZE, d.MINIMIZE]
    told = [t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    worst = [max(c.params for c in history), max(c.latency_ms for c in history)]
    finite = [c for c in history if math.isfinite(c.accuracy)]
    assert len(finite) == 8 and told == [
        [c.accuracy, c.params, c.latency_ms] if math.isfinite(c.accuracy) else [0.0, *worst] for c in history
    ]
    # selection by accuracy keeps the single-objective study whatever the objectives
    proposals.propose(space, history, search_config(method="bayesian", objectives=LATENCY), 3)
    assert studies[-1].directions == [d.MAXIMIZE]


def test_gp_sampler_needs_torch_or_proposes():
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ValueError, match=r"sampler='gp' \(optuna's GPSampler\) needs torch"):
            search_config(method="bayesian", sampler="gp")
        assert search_config(sampler="gp").sampler == "gp"  # only the Bayesian method samples with it
    else:
        space = nas.space(SN)
        batch = proposals.propose(
            space, made_history(6), search_config(method="bayesian", sampler="gp", selection="pareto"), 2
        )
        space.validate(batch)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"population_size": 0}, "SearchConfig: population_size must be an integer >= 1, got 0"),
        ({"sample_size": 5}, r"SearchConfig: sample_size must be an integer in \[1, 4\], got 5"),
        ({"method": "grid"}, "SearchConfig: method must be one of .*, got 'grid'"),
        ({"learning_rate": float("inf")}, "SearchConfig: learning_rate must be a finite number > 0, got inf"),
        ({"steps": 2.5}, "SearchConfig: steps must be an integer >= 1, got 2.5"),
        ({"execution": "pmap"}, "SearchConfig: execution must be one of"),
        ({"learning_rate": -1.0}, "SearchConfig: learning_rate must be a finite number > 0, got -1.0"),
        ({"mutation_rate": 2.0}, "SearchConfig: mutation_rate must be a finite number >= 0 and <= 1, got 2.0"),
        ({"generations": 0}, "SearchConfig: generations must be an integer >= 1, got 0"),
        ({"objectives": ("params",)}, "objectives must include 'accuracy', got \\('params',\\)"),
        ({"objectives": ("accuracy", "flops")}, "objective 'flops' is not one of"),
        ({"objectives": ("accuracy", "params", "params")}, "objectives name 'params' more than once"),
        ({"objectives": 3}, "objectives must be a sequence of names"),
        ({"selection": "nsga"}, "SearchConfig: selection must be one of"),
        ({"sampler": "cmaes"}, "SearchConfig: sampler must be one of"),
    ],
)
def test_bad_configs_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        search_config(**kw)


def test_the_method_picks_the_search_and_ints_stay_plain():
    assert proposals.METHODS == ("random", "evolution", "bayesian")
    cfg = search_config(method="random", generations=np.int64(2), learning_rate=1)
    assert cfg.method == "random" and type(cfg.generations) is int and cfg.learning_rate == 1.0
    with pytest.raises(TypeError):
        search_config(strategy="random")


def test_objectives_are_normalised():
    assert search_config(objectives=["latency", "accuracy"]).objectives == ("accuracy", "latency")
    assert search_config(objectives="accuracy, params,latency").objectives == LATENCY
    assert search_config(objectives=("params", "accuracy")) == search_config()
