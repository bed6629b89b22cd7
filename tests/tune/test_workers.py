"""hamjax.tune.workers: several worker processes on one study; the trials of a killed one failed and retried.

The multi-process test starts 4 workers on one journal-file study and 4 on one
PostgreSQL study, each running ``hamjax.tune.run`` (a linear model on digits,
batches of 8, the median pruner), SIGKILLs one of them while it holds running
trials, and checks with :func:`hamjax.tune.workers.audit` that every trial
ended COMPLETE, PRUNED or FAIL-then-retried, none lost or written twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hamjax.tune import storage as st
from hamjax.tune import workers as wk

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x": FloatDistribution(-1.0, 1.0)}


def _dead_worker() -> dict:
    """The identity of a process of this machine that has exited."""
    code = "from hamjax.tune.workers import worker_identity; import json; print(json.dumps(worker_identity()))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trials_of_a_dead_worker_are_failed_and_retried_once(kind, tmp_path):
    url = f"sqlite:///{tmp_path}/t.db" if kind == "sqlite" else f"journal:///{tmp_path}/t.log"
    study = st.create_or_load_study(st.open_storage(url), "s", ["minimize"])
    dead, alive = _dead_worker(), wk.worker_identity()
    for worker, x in [(dead, 0.25), (alive, 0.5)]:
        study.add_trial(
            optuna.create_trial(
                state=TrialState.RUNNING, params={"x": x}, distributions=SPACE, system_attrs={wk.WORKER_ATTR: worker}
            )
        )
    other = st.create_or_load_study(st.open_storage(url), "s", ["minimize"])  # a second worker looks too
    assert wk.fail_stale_trials(study) == [0]
    assert wk.fail_stale_trials(other) == []
    states = [(t.state, t.params["x"]) for t in study.trials]
    assert states == [(TrialState.FAIL, 0.25), (TrialState.RUNNING, 0.5), (TrialState.WAITING, 0.25)]
    assert study.trials[2].system_attrs["failed_trial"] == 0
    assert wk.WORKER_ATTR not in study.trials[2].system_attrs  # nobody's until a worker asks it


def test_a_trial_whose_heartbeat_stops_is_failed_and_retried(tmp_path):
    storage = st.open_storage(f"sqlite:///{tmp_path}/t.db", heartbeat_interval=1, grace_period=1)
    study = st.create_or_load_study(storage, "s", ["minimize"])
    far = {"host": "another-machine", "pid": 1, "start": "1"}  # not this machine's: only its heartbeat tells
    study.add_trial(
        optuna.create_trial(
            state=TrialState.RUNNING, params={"x": 0.1}, distributions=SPACE, system_attrs={wk.WORKER_ATTR: far}
        )
    )
    storage.record_heartbeat(study.trials[0]._trial_id)
    assert wk.fail_stale_trials(study) == []
    time.sleep(2.2)
    assert wk.fail_stale_trials(study) == [0]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]


def test_audit_names_lost_and_duplicated_trials():
    study = st.create_or_load_study(None, "a", ["minimize"])
    gone = {**_dead_worker(), "ask": "t-0"}
    study.add_trial(
        optuna.create_trial(params={"x": 0.5}, distributions=SPACE, value=1.0, system_attrs={wk.WORKER_ATTR: gone})
    )
    study.add_trial(
        optuna.create_trial(params={"x": 0.5}, distributions=SPACE, value=1.0, system_attrs={wk.WORKER_ATTR: gone})
    )
    study.add_trial(
        optuna.create_trial(
            state=TrialState.RUNNING,
            params={"x": 0.1},
            distributions=SPACE,
            system_attrs={wk.WORKER_ATTR: {**gone, "ask": "t-1"}},
        )
    )
    study.add_trial(
        optuna.create_trial(params={"x": 0.2}, distributions=SPACE, value=1.0, system_attrs={"retry_history": [0]})
    )
    problems = wk.audit(study)["problems"]
    assert any("trials 0 and 1 were written by one ask" in p for p in problems)
    assert any("trial 2 is RUNNING but its worker" in p for p in problems)
    assert any("trial 0 was retried but is TrialState.COMPLETE, not FAIL" in p for p in problems)


WORKER = """
import os, sys, time
url, name, trials, seed, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import jax, jax.numpy as jnp, hamjax
from hamjax import tune
from hamjax.tune.storage import open_storage

ds = hamjax.data.load("digits", seed=0)
def apply_fn(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]
def init(key):
    return {"w": 0.01 * jax.random.normal(key, (64, 10)), "b": jnp.zeros(10)}
space = {"learning_rate": {"low": 1e-3, "high": 3e-1, "log": True}, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}, "batch_size": 64}
storage = open_storage(url, heartbeat_interval=1, grace_period=3)
open(f"{go}.ready{seed}", "w").close()
while not os.path.exists(go):
    time.sleep(0.02)
tune.run(apply_fn, init, ds, space, trials=trials, batch=8, epochs=2, seed=seed, storage=storage, study_name=name,
         execution="vmap", pruner="median", progress=False)
"""


def run_workers(url: str, folder, *, workers: int = 4, trials: int = 256, timeout: float = 240.0) -> dict:
    """Start ``workers`` processes on one study, SIGKILL the first while it runs trials; the study's audit."""
    study = st.create_or_load_study(st.open_storage(url), "shared", ["maximize"])
    go = str(folder / "go")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, "shared", str(trials), str(i), go], stderr=subprocess.PIPE, text=True
        )
        for i in range(workers)
    ]
    try:
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(f"{go}.ready{i}") for i in range(workers)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
            time.sleep(0.05)
        open(go, "w").close()
        started = time.monotonic()
        victim, killed_at = procs[0], None
        while killed_at is None:
            assert time.monotonic() < deadline and victim.poll() is None, "the victim finished before it was killed"
            trials_now = study.get_trials(deepcopy=False)
            counted = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials_now)
            mine = [
                t
                for t in trials_now
                if t.state == TrialState.RUNNING and (t.system_attrs.get(wk.WORKER_ATTR) or {}).get("pid") == victim.pid
            ]
            if counted >= trials // 4 and mine:
                os.kill(victim.pid, signal.SIGKILL)
                killed_at = (counted, len(mine))
            time.sleep(0.02)
        for proc in procs[1:]:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert proc.returncode == 0, err[-2000:]
        seconds = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = wk.audit(st.create_or_load_study(st.open_storage(url), "shared", ["maximize"]))
    report["killed_at"] = {"finished_trials": killed_at[0], "its_running_trials": killed_at[1]}
    report["seconds"] = round(seconds, 1)
    return report


# bench/tune_workers.py runs these tests with fewer trials for its --quick variant
TRIALS = int(os.environ.get("HAMJAX_TUNE_WORKERS_TRIALS", "256"))


def _check(report: dict, trials: int, storage: str) -> None:
    print("audit " + json.dumps({"storage": storage, "trials_asked_for": trials, **report}))
    assert report["problems"] == []
    assert report["running"] == 0 and report["waiting"] == 0
    assert report["complete"] + report["pruned"] >= trials
    assert report["pruned"] > 0
    # the killed worker's running trials, each failed once and retried once
    assert report["failed"] == report["retried"] >= 1


@pytest.mark.slow
def test_four_workers_on_a_journal_file_one_killed(tmp_path):
    report = run_workers(f"journal:///{tmp_path}/shared.log", tmp_path, trials=TRIALS)
    _check(report, TRIALS, "journal")


@pytest.mark.slow
def test_four_workers_on_postgresql_one_killed(postgresql_url, tmp_path):
    report = run_workers(postgresql_url, tmp_path, trials=TRIALS)
    _check(report, TRIALS, "postgresql")
