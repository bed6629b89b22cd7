"""Many workers on one study: which process runs a trial, and what happens to the trials of one that died.

Every trial asked by :func:`hamjax.tune.bookkeeping.ask_batch` records its
worker (host, pid, the pid's start time) in the system attr ``hamjax:worker``.
A worker of this machine that is gone is seen at once; a worker elsewhere
through the SQL storages' heartbeat. :func:`fail_stale_trials` fails their
running trials once, however many workers look at the same time, and enqueues
each again with its parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``,
``max_retry`` of :func:`hamjax.tune.storage.open_storage`); :func:`audit`
checks afterwards that every trial finished or was retried, none lost and
none written twice.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any

from hamjax.tune.storage import WORKER_ATTR, recovery_lock, retry_callback


def heartbeat_interval(storage) -> int | None:
    """Seconds between heartbeats of ``storage``'s running trials, or ``None`` where it beats none.

    Args:
      storage: an Optuna storage (a study's ``_storage`` included).

    Returns:
      The interval, or ``None`` (in memory, journal file).

    Examples:
      >>> from hamjax.tune.storage import open_storage
      >>> heartbeat_interval(open_storage(None)) is None
      True
    """
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if callable(get) else None


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # a zombie (killed, not yet reaped by its parent) runs no more trials
    return None if fields[0] in ("Z", "X") else fields[19]


def worker_identity() -> dict:
    """This process as recorded in its trials' system attrs: host, pid, and the pid's start time.

    The start time tells a pid reused by a later process from the worker itself.

    Returns:
      ``{"host": str, "pid": int, "start": str | None}``.

    Examples:
      >>> sorted(worker_identity())
      ['host', 'pid', 'start']
    """
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _worker_is_gone(worker: Any) -> bool:
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False  # another machine's worker: its heartbeat says whether it lives
    start = _process_start(int(worker.get("pid", -1)))
    return start is None or start != worker.get("start")


def fail_stale_trials(study) -> list[int]:
    """Fail the running trials whose worker is gone and enqueue them again; returns their numbers.

    A trial is stale when its worker process (recorded by :func:`ask_batch`) no
    longer runs on this machine, or, on a SQL storage with a heartbeat, when its
    heartbeat is older than the grace period. Each stale trial is failed once,
    however many workers look at the same time, and enqueued again with its
    parameters (up to ``max_retry`` times); :func:`ask_batch` calls this first.

    Args:
      study: an ``optuna.Study``.

    Returns:
      The numbers of the trials this call failed.

    Examples:
      >>> import optuna
      >>> from hamjax.tune.storage import create_or_load_study
      >>> study = create_or_load_study(None, "stale", ["minimize"])
      >>> fail_stale_trials(study)
      []
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    failed: list[int] = []
    if heartbeat_interval(storage) is not None:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        now = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        failed += [t.number for t in now if t.number not in before]
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not any(_worker_is_gone(t.system_attrs.get(WORKER_ATTR)) for t in running):
        return failed
    retry = retry_callback(storage)
    with recovery_lock(storage):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not _worker_is_gone(trial.system_attrs.get(WORKER_ATTR)):
                continue
            try:
                if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker failed it first
            failed.append(trial.number)
            if retry is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    retry(study, storage.get_trial(trial._trial_id))
    return failed


def audit(study) -> dict:
    """Check a study that several workers ran: every trial finished or retried, none lost, none written twice.

    A FAIL trial that was retried has exactly one later trial naming it last in
    its ``retry_history``, with the same parameters; a FAIL trial that was not
    (a NaN or diverged value) stands as it is. Problems: a RUNNING trial whose
    worker is gone (lost), a RUNNING retry that no worker recorded (its worker
    died between taking it and recording itself), a trial retried more than once or with other
    parameters (duplicated or changed), two trials written by one ask (the same
    ``ask`` token in their worker record).

    Args:
      study: an ``optuna.Study``.

    Returns:
      ``{"trials", "complete", "pruned", "failed", "retried", "running",
      "waiting", "problems"}``: counts by state, FAIL trials that were retried,
      and a list of one-line problems (empty when all is well).

    Examples:
      >>> import optuna
      >>> study = optuna.create_study()
      >>> study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
      >>> report = audit(study)
      >>> report["complete"], report["problems"]
      (3, [])
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    retries: dict[int, list] = {}
    for trial in trials:
        history = trial.system_attrs.get("retry_history") or []
        if history:
            retries.setdefault(history[-1], []).append(trial)
    problems, tokens = [], {}
    for trial in trials:
        worker = trial.system_attrs.get(WORKER_ATTR)
        token = worker.get("ask") if isinstance(worker, dict) else None
        if token is not None and tokens.setdefault(token, trial.number) != trial.number:
            problems.append(f"trials {tokens[token]} and {trial.number} were written by one ask ({token})")
        if trial.state == TrialState.RUNNING and _worker_is_gone(worker):
            problems.append(f"trial {trial.number} is RUNNING but its worker {worker} is gone")
        elif trial.state == TrialState.RUNNING and worker is None and "retry_history" in trial.system_attrs:
            problems.append(f"trial {trial.number} is a RUNNING retry that no worker recorded")
    for failed, again in retries.items():
        if len(again) > 1:
            problems.append(f"trial {failed} was retried {len(again)} times: {[t.number for t in again]}")
        original = by_number.get(failed)
        if original is None or original.state != TrialState.FAIL:
            problems.append(f"trial {failed} was retried but is {getattr(original, 'state', None)}, not FAIL")
        elif any(t.params != original.params for t in again):
            problems.append(f"trial {failed} was retried with other parameters")
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    return {
        "trials": len(trials),
        "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "failed": count[TrialState.FAIL],
        "retried": len(retries),
        "running": count[TrialState.RUNNING],
        "waiting": count[TrialState.WAITING],
        "problems": problems,
    }
