import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from searches import INF, LATENCY, SN, search_config, supernet_of

from hamjax import measure
from hamjax.search import engine, nas, proposals


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
    sn, workdir = supernet_of(digits), str(tmp_path)
    config = search_config(objectives=LATENCY, selection="pareto", mutation_rate=0.0)

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
            engine.run(sn, digits, search_config(mutation_rate=0.0, **kw), workdir=workdir, progress=False)


def test_pareto_selection_resumes_to_the_same_result(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "evaluate_generation", _fake_evaluate)
    monkeypatch.setattr(engine.measure, "latency", _fake_latency([]))
    sn, config = supernet_of(digits), search_config(selection="pareto", generations=4)
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
    config = search_config()
    before = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("objectives", "selection", "sampler")}
    assert engine._fingerprint(SN, config) == engine.json_safe({"config": before, "supernet": repr(SN)})
    assert engine._fingerprint(SN, search_config(objectives=LATENCY))["config"]["objectives"] == list(LATENCY)


@pytest.mark.parametrize(
    "method",
    [pytest.param("random", marks=pytest.mark.slow), "evolution", pytest.param("bayesian", marks=pytest.mark.slow)],
)
def test_every_method_searches(digits, method):
    seen = []
    result = engine.run(
        supernet_of(digits),
        digits,
        search_config(method=method),
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
        assert c.params == nas.param_count(supernet_of(digits), c.genome)


@pytest.mark.slow  # real training and one latency measurement per architecture
@pytest.mark.parametrize("method", ["evolution", "bayesian"])
def test_a_three_objective_search_measures_every_candidate(digits, method):
    config = search_config(method=method, generations=2, objectives=LATENCY, selection="pareto")
    result = engine.run(supernet_of(digits), digits, config, progress=False)
    assert len(result.history) == 8 and all(c.latency_ms > 0 for c in result.history)
    by_architecture = {}
    for c in result.history:
        assert by_architecture.setdefault(engine._architecture(c.genome), c.latency_ms) == c.latency_ms
    columns = [[c.accuracy for c in result.history], [c.params for c in result.history]]
    front = engine.pareto_front(*columns, [c.latency_ms for c in result.history])
    assert result.pareto == tuple(result.history[i] for i in front)


def test_evolution_children_come_from_the_last_population(digits):
    sn = supernet_of(digits)
    space = nas.space(sn)
    history = engine.run(sn, digits, search_config(generations=1), progress=False).history
    children = engine.propose(space, list(history), search_config(mutation_rate=0.0), 1)
    alive = {json.dumps(c.genome, sort_keys=True) for c in history}
    for i in range(4):
        assert json.dumps(nas.decode(sn, {n: children[n][i] for n in space.names}), sort_keys=True) in alive


@pytest.mark.slow  # about 30 s; test_pareto_selection_resumes_to_the_same_result covers resuming by default
def test_an_interrupted_search_resumes_to_the_same_result(digits, tmp_path):
    sn, config = supernet_of(digits), search_config(method="evolution", generations=3)
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
        engine.run(sn, digits, search_config(generations=4, seed=5), workdir=str(tmp_path / "b"), progress=False)


def test_engine_reexports_the_proposals():
    for name in (
        "METHODS",
        "OBJECTIVES",
        "SearchConfig",
        "Candidate",
        "check_objectives",
        "propose",
        "tournament_fitness",
    ):
        assert getattr(engine, name) is getattr(proposals, name), name


def test_a_fingerprint_saved_before_the_method_rename_still_matches():
    current = engine._fingerprint(SN, search_config())
    saved = {**current, "config": {("strategy" if k == "method" else k): v for k, v in current["config"].items()}}
    assert "strategy" in saved["config"] and engine._upgrade(saved) == current
    assert engine._upgrade(current) is current


def test_data_that_does_not_fit_the_supernet_is_refused(digits):
    sn = nas.SupernetConfig(
        input_shape=(28, 28, 1), num_classes=10, patch_size=7, hidden_size=16, max_layers=1, widths=(8,), num_heads=2
    )
    with pytest.raises(ValueError, match="the supernet takes"):
        engine.run(sn, digits, search_config(), progress=False)


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
