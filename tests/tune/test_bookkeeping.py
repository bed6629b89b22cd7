"""hamjax.tune.bookkeeping: a batch of trials asked and told through every storage, with any sampler."""

from __future__ import annotations

import datetime
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hamjax.tune import bookkeeping as bk
from hamjax.tune import storage as st
from hamjax.tune import workers as wk

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "depth": IntDistribution(1, 4),
    "act": CategoricalDistribution(["relu", "gelu"]),
}


def _url(kind, tmp_path):
    return {"memory": None, "sqlite": f"sqlite:///{tmp_path}/t.db", "journal": f"journal:///{tmp_path}/t.log"}[kind]


def _value(params):
    return math.log10(params["lr"]) ** 2 + params["depth"] + (params["act"] == "gelu")


@pytest.mark.parametrize("kind", ["memory", "sqlite", "journal"])
def test_batches_are_asked_and_told_through_every_storage(kind, tmp_path):
    url = _url(kind, tmp_path)
    sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=4)
    study = st.create_or_load_study(st.open_storage(url), "s", ["minimize"], sampler=sampler)
    for _ in range(3):
        trials = bk.ask_batch(study, 6, SPACE)
        assert [t.study.trials[t.number].state for t in trials] == [TrialState.RUNNING] * 6
        assert all(set(t.params) == set(SPACE) for t in trials)
        bk.tell_batch(study, trials, [_value(t.params) for t in trials])
    stored = (study if url is None else st.create_or_load_study(st.open_storage(url), "s", ["minimize"])).trials
    assert [t.number for t in stored] == list(range(18))
    assert {t.state for t in stored} == {TrialState.COMPLETE}
    now = datetime.datetime.now()
    for t in stored:
        assert t.value == pytest.approx(_value(t.params))
        assert t.distributions == SPACE
        # local times, as Optuna's own writes give them
        assert now - datetime.timedelta(minutes=5) < t.datetime_start <= t.datetime_complete <= now
    # constant liar: one batch is not six copies of one point
    assert len({t.params["lr"] for t in stored[12:]}) == 6


@pytest.mark.parametrize("kind", ["memory", "sqlite", "journal"])
def test_nan_fails_pruned_keeps_its_last_report_and_the_study_goes_on(kind, tmp_path):
    study = st.create_or_load_study(st.open_storage(_url(kind, tmp_path)), "s", ["maximize"])
    trials = bk.ask_batch(study, 4, SPACE)
    trials[2].report(0.25, step=1)
    trials[2].report(0.5, step=2)
    bk.tell_batch(
        study,
        trials,
        [0.75, float("nan"), None, 0.5],
        states=[None, None, TrialState.PRUNED, TrialState.COMPLETE],
    )
    states = [(t.state, t.value) for t in study.trials]
    assert states == [
        (TrialState.COMPLETE, 0.75),
        (TrialState.FAIL, None),
        (TrialState.PRUNED, 0.5),
        (TrialState.COMPLETE, 0.5),
    ]
    assert len(bk.ask_batch(study, 2, SPACE)) == 2


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_waiting_trials_are_taken_first_and_other_workers_trials_are_seen(kind, tmp_path):
    url = _url(kind, tmp_path)
    sampler = optuna.samplers.TPESampler(seed=1, constant_liar=True, n_startup_trials=2)
    mine = st.create_or_load_study(st.open_storage(url), "s", ["minimize"], sampler=sampler)
    theirs = st.create_or_load_study(st.open_storage(url), "s", ["minimize"])
    bk.tell_batch(mine, (first := bk.ask_batch(mine, 3, SPACE)), [1.0, 2.0, 3.0])
    theirs.enqueue_trial({"lr": 0.01, "depth": 2, "act": "relu"})
    other = bk.ask_batch(theirs, 2, SPACE)  # the enqueued trial, then one sampled by the other worker
    assert other[0].params == {"lr": 0.01, "depth": 2, "act": "relu"}
    bk.tell_batch(theirs, other, [0.5, 0.25])
    batch = bk.ask_batch(mine, 2, SPACE)
    mirror = bk._MIRRORS[mine]
    assert len(mirror.study.trials) == len(mine.trials) == 7
    assert [t.state for t in mirror.study.trials[:5]] == [TrialState.COMPLETE] * 5
    assert sorted(t.number for t in [*first, *other, *batch]) == list(range(7))
    workers = {t.system_attrs[wk.WORKER_ATTR]["pid"] for t in mine.trials}
    assert workers == {wk.worker_identity()["pid"]}


def test_grid_and_nsga2_samplers_work_through_batches(tmp_path):
    grid = {"depth": [1, 2, 3, 4], "act": ["relu", "gelu"]}
    space = {"depth": IntDistribution(1, 4), "act": CategoricalDistribution(["relu", "gelu"])}
    url = f"sqlite:///{tmp_path}/g.db"
    study = st.create_or_load_study(
        st.open_storage(url), "grid", ["minimize"], sampler=optuna.samplers.GridSampler(grid)
    )
    trials = bk.ask_batch(study, 8, space)
    assert sorted((t.params["depth"], t.params["act"]) for t in trials) == sorted(
        (d, a) for d in grid["depth"] for a in grid["act"]
    )
    bk.tell_batch(study, trials, [float(t.params["depth"]) for t in trials])
    nsga = st.create_or_load_study(
        st.open_storage(url),
        "nsga",
        ["minimize", "maximize"],
        sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=0),
    )
    two = {"a": FloatDistribution(-2.0, 2.0), "b": FloatDistribution(-2.0, 2.0)}
    for _ in range(3):
        batch = bk.ask_batch(nsga, 4, two)
        bk.tell_batch(nsga, batch, [(t.params["a"] ** 2, t.params["b"]) for t in batch])
    generations = [t.system_attrs["NSGAIISampler:generation"] for t in nsga.trials]
    assert generations == [0] * 4 + [1] * 4 + [2] * 4
    assert {t.state for t in nsga.trials} == {TrialState.COMPLETE}


def test_a_heartbeat_is_beaten_for_running_trials(tmp_path):
    storage = st.open_storage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=1, grace_period=2)
    study = st.create_or_load_study(storage, "s", ["minimize"])
    trials = bk.ask_batch(study, 3, SPACE)
    import time

    time.sleep(3.5)  # longer than the grace period: only the beats keep them alive
    assert wk.fail_stale_trials(study) == []
    bk.tell_batch(study, trials, [1.0, 2.0, 3.0])
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}


def test_bad_batches_are_refused(tmp_path):
    study = st.create_or_load_study(None, "s", ["minimize"])
    with pytest.raises(ValueError, match="ask_batch: n must be an integer >= 1, got 0"):
        bk.ask_batch(study, 0, SPACE)
    with pytest.raises(ValueError, match="ask_batch: distributions must be a non-empty mapping"):
        bk.ask_batch(study, 2, {})
    trials = bk.ask_batch(study, 2, SPACE)
    with pytest.raises(ValueError, match=r"tell_batch: values and states must have one entry per trial \(2\), got 1"):
        bk.tell_batch(study, trials, [1.0])
    with pytest.raises(ValueError, match="tell_batch: states must be COMPLETE, PRUNED or FAIL"):
        bk.tell_batch(study, trials, [1.0, 2.0], states=[TrialState.RUNNING, None])


def test_batches_on_postgresql(postgresql_url):
    storage = st.open_storage(postgresql_url, heartbeat_interval=5)
    sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, n_startup_trials=4)
    study = st.create_or_load_study(storage, "pg", ["minimize"], sampler=sampler)
    other = st.create_or_load_study(st.open_storage(postgresql_url), "pg", ["minimize"])
    for _ in range(2):
        mine, theirs = bk.ask_batch(study, 5, SPACE), bk.ask_batch(other, 3, SPACE)
        bk.tell_batch(other, theirs, [_value(t.params) for t in theirs])
        mine[0].report(0.5, step=1)
        bk.tell_batch(study, mine, [_value(t.params) for t in mine], states=[TrialState.PRUNED] + [None] * 4)
    stored = study.trials
    assert [t.number for t in stored] == list(range(16))
    assert sum(t.state == TrialState.PRUNED for t in stored) == 2
    for t in stored:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(_value(t.params))
        assert t.datetime_start <= t.datetime_complete
    assert wk.audit(study)["problems"] == []


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_waiting_trials_after_a_batch_keep_their_values_and_the_sampler_one_study(kind, tmp_path):
    # one sampler object serves one study (multivariate TPE caches its search space per study):
    # waiting trials are completed on the mirror, never through the stored study's sampler
    sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, multivariate=True, n_startup_trials=2)
    study = st.create_or_load_study(st.open_storage(_url(kind, tmp_path)), "s", ["minimize"], sampler=sampler)
    first = bk.ask_batch(study, 4, SPACE)
    bk.tell_batch(study, first, [_value(t.params) for t in first])
    study.enqueue_trial({"lr": 0.002})  # a warm start naming one parameter
    retried = {"lr": 0.03, "depth": 3, "act": "gelu"}
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=retried, distributions=SPACE))
    batch = bk.ask_batch(study, 3, SPACE)
    assert batch[0].params["lr"] == 0.002 and set(batch[0].params) == set(SPACE)
    assert batch[1].params == retried
    bk.tell_batch(study, batch, [_value(t.params) for t in batch])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 7
    assert [t.params for t in study.trials[4:6]] == [batch[0].params, retried]
