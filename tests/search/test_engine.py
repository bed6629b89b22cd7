import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hamjax.search import engine, nas

TINY = dict(patch_size=4, hidden_size=16, max_layers=2, widths=(8, 16), num_heads=2)


def _supernet(ds):
    return nas.SupernetConfig(input_shape=tuple(ds.input_shape), num_classes=ds.num_classes, **TINY)


def _config(**kw):
    base = dict(generations=3, population_size=4, steps=10, batch_size=64, sample_size=2, eval_rows=120)
    return engine.SearchConfig(**{**base, **kw})


def test_pareto_front_keeps_the_non_dominated():
    acc = [0.9, 0.8, 0.95, 0.85, float("-inf"), 0.95]
    size = [100, 50, 300, 200, 10, 400]
    assert engine.pareto_front(acc, size) == [1, 0, 2]
    with pytest.raises(ValueError, match="one length"):
        engine.pareto_front([0.1], [1, 2])


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
    ],
)
def test_bad_configs_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        _config(**kw)


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
