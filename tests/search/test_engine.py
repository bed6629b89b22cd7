import dataclasses
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hamjax import measure
from hamjax.search import engine, nas, selection

TINY = dict(patch_size=4, hidden_size=16, max_layers=2, widths=(8, 16), num_heads=2)
SN = nas.SupernetConfig(input_shape=(8, 8, 1), num_classes=10, **TINY)  # the digits supernet, for runs without data
LATENCY = ("accuracy", "params", "latency")
INF, NAN = float("inf"), float("nan")


def _supernet(ds):
    return nas.SupernetConfig(input_shape=tuple(ds.input_shape), num_classes=ds.num_classes, **TINY)


def _config(**kw):
    base = dict(generations=3, population_size=4, steps=10, batch_size=64, sample_size=2, eval_rows=120)
    return engine.SearchConfig(**{**base, **kw})


def _history(n, *, seed=0, accuracies=None):
    """``n`` hand-made candidates of ``SN`` with accuracies (every fifth diverged) and fake latencies."""
    space = nas.space(SN)
    genomes = space.sample(jax.random.key(seed), n)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values = nas.decode(SN, {k: genomes[k][i] for k in space.names})
        size = nas.param_count(SN, values)
        acc = accuracies[i] if accuracies is not None else (float(rng.uniform(0.1, 0.9)) if i % 5 else -INF)
        out.append(engine.Candidate(0, values, acc, size, nas.describe(values), size / 1000))
    return out


def test_pareto_tournament_prefers_the_non_dominated():
    alive = [engine.Candidate(0, {}, a, p, "") for a, p in [(0.9, 1000), (0.9, 100), (0.5, 50), (-INF, 10)]]
    by_accuracy = engine.tournament_fitness(alive, _config())
    by_pareto = engine.tournament_fitness(alive, _config(selection="pareto"))
    # by accuracy the older of the two 0.9s wins; by rank 1 dominates 0, and 2 (rank 0) beats 0 (rank 1)
    assert selection.elite(by_accuracy, 4).tolist() == [0, 1, 2, 3]
    assert selection.elite(by_pareto, 4).tolist() == [1, 2, 0, 3]
    # the diverged member, though the smallest, wins only a tournament it alone entered
    chance = selection.probabilities(by_pareto, "tournament", k=4)
    assert chance[3] == pytest.approx(0.25**4) and chance[2] > chance[0]
    # with latency as well, 0 (the fastest) is no longer dominated: all finite members share rank 0
    alive = [dataclasses.replace(c, latency_ms=ms) for c, ms in zip(alive, [1.0, 3.0, 2.0, 0.1], strict=True)]
    by_all = engine.tournament_fitness(alive, _config(selection="pareto", objectives=LATENCY))
    assert selection.elite(by_all, 4).tolist() == [0, 1, 2, 3]


def test_pareto_tournament_on_accuracy_alone_is_the_accuracy_tournament():
    history = _history(6, accuracies=[0.1, 0.2, 0.5, 0.7, 0.7, -INF])  # the last four are the population
    space = nas.space(SN)
    one, plain = _config(selection="pareto", objectives=("accuracy",)), _config()
    alive = [dataclasses.replace(c, accuracy=NAN) if i == 1 else c for i, c in enumerate(history[2:])]
    np.testing.assert_array_equal(
        selection.elite(engine.tournament_fitness(alive, one), 4),
        selection.elite(engine.tournament_fitness(alive, plain), 4),
    )
    for generation in (1, 2):
        a, b = engine.propose(space, history, one, generation), engine.propose(space, history, plain, generation)
        for name in space.names:
            np.testing.assert_array_equal(a[name], b[name])


def test_multi_objective_bayesian_proposes_valid_genomes(monkeypatch):
    import optuna

    studies = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: studies.append(create(**kw)) or studies[-1])
    space, history = nas.space(SN), _history(10)
    config = _config(strategy="bayesian", selection="pareto", objectives=LATENCY)
    batch = engine.propose(space, history, config, 3)
    space.validate(batch)
    for i in range(config.population_size):
        values = nas.decode(SN, {n: batch[n][i] for n in space.names})
        assert nas.param_count(SN, values) > 0
    again = engine.propose(space, history, config, 3)
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
    engine.propose(space, history, _config(strategy="bayesian", objectives=LATENCY), 3)
    assert studies[-1].directions == [d.MAXIMIZE]


def test_gp_sampler_needs_torch_or_proposes():
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ValueError, match=r"sampler='gp' \(optuna's GPSampler\) needs torch"):
            _config(strategy="bayesian", sampler="gp")
        assert _config(sampler="gp").sampler == "gp"  # only the Bayesian strategy samples with it
    else:
        space = nas.space(SN)
        batch = engine.propose(space, _history(6), _config(strategy="bayesian", sampler="gp", selection="pareto"), 2)
        space.validate(batch)


def _fake_evaluate(supernet, dataset, config, genomes, generation, *, trainer=None):
    """Accuracies that depend on the genes only (no training); member 1 diverges in odd generations."""
    del supernet, dataset, trainer
    acc = 0.3 + 0.1 * np.asarray(genomes["depth"]) - 0.02 * np.asarray(genomes["op0"]) + 0.01 * generation
    if generation % 2:
        acc[1] = -INF
    return acc[: config.population_size].astype(np.float32), None


def _fake_latency(timed):
    def latency(runner, x, **kw):
        del x, kw
        timed.append(measure.param_count(runner.params))
        return measure.Latency(1, timed[-1] / 1000, 0.0, 0.0, 1)

    return latency


def test_latency_objective_times_each_architecture_once(digits, tmp_path, monkeypatch):
    timed = []
    monkeypatch.setattr(engine, "evaluate_generation", _fake_evaluate)
    monkeypatch.setattr(engine.measure, "latency", _fake_latency(timed))
    sn, workdir = _supernet(digits), str(tmp_path)
    config = _config(objectives=LATENCY, selection="pareto", mutation_rate=0.0)

    def stop(generation, new):
        if generation == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.run(sn, digits, config, workdir=workdir, progress=False, on_generation=stop)
    first = len(timed)
    result = engine.run(sn, digits, config, workdir=workdir, progress=False)
    assert result.resumed_from == 0
    archs = [engine._architecture(c.genome) for c in result.history]
    # every distinct architecture timed once, across the interrupted run and the resumed one
    assert first == len(set(archs[:4])) and len(timed) == len(set(archs)) < len(archs)
    for c in result.history:
        assert c.latency_ms == nas.param_count(sn, c.genome) / 1000
    columns = ([c.accuracy for c in result.history], [c.params for c in result.history])
    front = engine.pareto_front(*columns, [c.latency_ms for c in result.history])
    assert result.pareto == tuple(result.history[i] for i in front) and len(timed) == len(set(archs))
    assert all(math.isfinite(c.accuracy) for c in result.pareto)
    # a checkpoint of other objectives, selection or sampler is refused, naming the difference
    refused = [
        ({}, r"objectives: \['accuracy', 'params', 'latency'\] there, \['accuracy', 'params'\] here; selection"),
        ({"objectives": LATENCY, "sampler": "gp"}, r"another search \(selection: 'pareto' there, 'accuracy' here; "),
        ({"objectives": LATENCY, "selection": "pareto", "sampler": "gp"}, r"\(sampler: 'tpe' there, 'gp' here\)"),
    ]
    for kw, match in refused:
        with pytest.raises(ValueError, match=match):
            engine.run(sn, digits, _config(mutation_rate=0.0, **kw), workdir=workdir, progress=False)


def test_pareto_selection_resumes_to_the_same_result(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "evaluate_generation", _fake_evaluate)
    monkeypatch.setattr(engine.measure, "latency", _fake_latency([]))
    sn, config = _supernet(digits), _config(selection="pareto", generations=4)
    whole = engine.run(sn, digits, config, workdir=str(tmp_path / "a"), progress=False)

    def stop(generation, new):
        if generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.run(sn, digits, config, workdir=str(tmp_path / "b"), progress=False, on_generation=stop)
    resumed = engine.run(sn, digits, config, workdir=str(tmp_path / "b"), progress=False)
    assert resumed.resumed_from == 1 and resumed.to_dict() == whole.to_dict()
    assert all(c.latency_ms is None for c in whole.history) and all(c.latency_ms > 0 for c in whole.pareto)


def test_default_fingerprint_is_the_one_before_objectives():
    config = _config()
    before = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("objectives", "selection", "sampler")}
    assert engine._fingerprint(SN, config) == engine.json_safe({"config": before, "supernet": repr(SN)})
    assert engine._fingerprint(SN, _config(objectives=LATENCY))["config"]["objectives"] == list(LATENCY)


@pytest.mark.parametrize(
    "strategy",
    [pytest.param("random", marks=pytest.mark.slow), "evolution", pytest.param("bayesian", marks=pytest.mark.slow)],
)
def test_every_strategy_searches(digits, strategy):
    seen = []
    result = engine.run(
        _supernet(digits),
        digits,
        _config(strategy=strategy),
        progress=False,
        on_generation=lambda g, new: seen.append((g, len(new))),
    )
    assert seen == [(0, 4), (1, 4), (2, 4)] and len(result.history) == 12
    assert result.best.accuracy == max(c.accuracy for c in result.history) > 0.2
    assert result.pareto and all(c.latency_ms > 0 for c in result.pareto)
    accs = [c.accuracy for c in result.pareto]
    sizes = [c.params for c in result.pareto]
    assert sizes == sorted(sizes) and accs == sorted(accs)
    for c in result.history:
        assert c.params == nas.param_count(_supernet(digits), c.genome)


@pytest.mark.slow  # real training and one latency measurement per architecture
@pytest.mark.parametrize("strategy", ["evolution", "bayesian"])
def test_a_three_objective_search_measures_every_candidate(digits, strategy):
    config = _config(strategy=strategy, generations=2, objectives=LATENCY, selection="pareto")
    result = engine.run(_supernet(digits), digits, config, progress=False)
    assert len(result.history) == 8 and all(c.latency_ms > 0 for c in result.history)
    by_architecture = {}
    for c in result.history:
        assert by_architecture.setdefault(engine._architecture(c.genome), c.latency_ms) == c.latency_ms
    columns = [[c.accuracy for c in result.history], [c.params for c in result.history]]
    front = engine.pareto_front(*columns, [c.latency_ms for c in result.history])
    assert result.pareto == tuple(result.history[i] for i in front)


def test_evolution_children_come_from_the_last_population(digits):
    sn = _supernet(digits)
    space = nas.space(sn)
    history = engine.run(sn, digits, _config(generations=1), progress=False).history
    children = engine.propose(space, list(history), _config(mutation_rate=0.0), 1)
    alive = {json.dumps(c.genome, sort_keys=True) for c in history}
    for i in range(4):
        assert json.dumps(nas.decode(sn, {n: children[n][i] for n in space.names}), sort_keys=True) in alive


def test_an_interrupted_search_resumes_to_the_same_result(digits, tmp_path):
    sn, config = _supernet(digits), _config(strategy="evolution", generations=3)
    whole = engine.run(sn, digits, config, workdir=str(tmp_path / "a"), progress=False)

    def stop(generation, new):
        if generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.run(sn, digits, config, workdir=str(tmp_path / "b"), progress=False, on_generation=stop)
    resumed = engine.run(sn, digits, config, workdir=str(tmp_path / "b"), progress=False)
    assert resumed.resumed_from == 1
    assert resumed.to_dict()["history"] == whole.to_dict()["history"]
    with pytest.raises(ValueError, match="another search"):
        engine.run(sn, digits, _config(generations=4, seed=5), workdir=str(tmp_path / "b"), progress=False)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"population_size": 0}, "population size must be an integer >= 1"),
        ({"sample_size": 5}, "tournament size sample_size=5"),
        ({"strategy": "grid"}, "strategy must be one of"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"mutation_rate": 2.0}, "mutation_rate"),
        ({"generations": 0}, "generations must be"),
        ({"objectives": ("params",)}, "objectives must include 'accuracy', got \\('params',\\)"),
        ({"objectives": ("accuracy", "flops")}, "objective 'flops' is not one of"),
        ({"objectives": ("accuracy", "params", "params")}, "objectives name 'params' more than once"),
        ({"objectives": 3}, "objectives must be a sequence of names"),
        ({"selection": "nsga"}, "selection must be one of"),
        ({"sampler": "cmaes"}, "sampler must be one of"),
    ],
)
def test_bad_configs_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        _config(**kw)


def test_objectives_are_normalised():
    assert _config(objectives=["latency", "accuracy"]).objectives == ("accuracy", "latency")
    assert _config(objectives="accuracy, params,latency").objectives == LATENCY
    assert _config(objectives=("params", "accuracy")) == _config()


def test_data_that_does_not_fit_the_supernet_is_refused(digits):
    sn = nas.SupernetConfig(
        input_shape=(28, 28, 1), num_classes=10, patch_size=7, hidden_size=16, max_layers=1, widths=(8,), num_heads=2
    )
    with pytest.raises(ValueError, match="the supernet takes"):
        engine.run(sn, digits, _config(), progress=False)


def _cli(out, *extra):
    args = ["--data", "digits", "--generations", "4", "--population", "4", "--steps", "10", "--sample-size", "2"]
    args += ["--hidden-size", "16", "--max-layers", "2", "--out", str(out), "--quiet", *extra]
    return [sys.executable, "-m", "hamjax.cli", "search", *args]


@pytest.mark.slow  # three CLI processes: about 1.5 min on 2 idle cores, 6 min under load
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    whole = subprocess.run(_cli(tmp_path / "whole"), capture_output=True, text=True, env=env, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert (tmp_path / "whole" / "pareto.png").stat().st_size > 0
    killed = subprocess.Popen(_cli(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "search" / "1").exists():
        assert killed.poll() is None and time.time() < deadline, "the search ended before it could be killed"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = subprocess.run(_cli(tmp_path / "killed"), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after generation" in resumed.stdout
    a = json.loads((tmp_path / "whole" / "search.json").read_text())
    b = json.loads((tmp_path / "killed" / "search.json").read_text())
    assert a["history"] == b["history"] and a["best"] == b["best"]
    assert [c["genome"] for c in a["pareto"]] == [c["genome"] for c in b["pareto"]]
    assert "Pareto front" in whole.stdout and "validation accuracy" in whole.stdout
