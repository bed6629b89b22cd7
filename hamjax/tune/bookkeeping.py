"""Ask and tell a batch of trials at a storage cost of a few milliseconds a trial.

Optuna's ``study.ask`` writes a trial in one transaction per parameter and,
before each, reads every unfinished trial again (the batch's own included), so
a batch of 64 costs O(64²) reads; ``study.tell`` reads the trial back. Here the
sampler runs on an in-memory copy of the study (its mirror, kept in step with
the storage once per batch: new and newly finished trials only), and each trial
costs the storage two writes: one that creates it RUNNING with all its
parameters, one that finishes it. Every sampler works unchanged: the mirror
holds every trial the storage holds, the batch's running ones included (so
TPE's constant liar spreads a batch), and the attrs a sampler writes on a
trial (grid ids, CMA-ES generations) are written with the trial.

Trials waiting in the storage (enqueued warm starts, trials of dead workers
enqueued again) are taken first, through ``study.ask``. Each trial records
the process that runs it (:func:`hamjax.tune.workers.fail_stale_trials` fails
the trials of processes that are gone), and on a SQL storage a background
thread beats every running trial's heartbeat.
"""

from __future__ import annotations

import contextlib
import math
import threading
import uuid
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from hamjax.tune.storage import deferred_writes
from hamjax.tune.transactions import create_in_one_transaction, finish_in_one_transaction
from hamjax.tune.workers import WORKER_ATTR, fail_stale_trials, heartbeat_interval, worker_identity

_MIRRORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BEATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Heartbeat:
    """One daemon thread per storage and process: beats the heartbeat of this process's running trials."""

    def __init__(self, storage, interval: int):
        self._storage = weakref.ref(storage)
        self._interval = interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="hamjax-heartbeat").start()

    def add(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._ids.update(ids)
        self._wake.set()  # the first beat at once: a trial with no heartbeat is never found stale

    def discard(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._ids.difference_update(ids)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            storage = self._storage()
            if storage is None:
                return
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                # a lost connection: the next beat retries; whether the trial went stale is the server's call
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(trial_id)
            del storage


class _Mirror:
    """An in-memory study holding a copy of every trial of a stored study; the sampler runs on it."""

    def __init__(self, study):
        import optuna

        self.storage = optuna.storages.InMemoryStorage()
        directions = [d.name.lower() for d in study.directions]
        self.study = optuna.create_study(storage=self.storage, directions=directions, sampler=study.sampler)
        self.study_id = self.study._study_id
        self.ids: dict[int, int] = {}  # stored trial id -> mirror trial id
        self.open: set[int] = set()  # stored trial ids mirrored while unfinished

    def sync(self, trials) -> None:
        from optuna.trial import TrialState

        for trial in trials:
            if trial.state == TrialState.WAITING:
                continue
            mirrored = self.ids.get(trial._trial_id)
            if mirrored is None:
                self.ids[trial._trial_id] = self.storage.create_new_trial(self.study_id, template_trial=trial)
                if not trial.state.is_finished():
                    self.open.add(trial._trial_id)
            elif trial._trial_id in self.open and trial.state.is_finished():
                self.finish(trial._trial_id, trial)

    def finish(self, stored_id: int, trial) -> None:
        """Copy a finished stored trial's params, intermediate values, attrs and state onto its mirror."""
        mirrored = self.ids[stored_id]
        have = self.storage.get_trial(mirrored)
        for name, value in trial.params.items():
            if name not in have.params:
                dist = trial.distributions[name]
                self.storage.set_trial_param(mirrored, name, dist.to_internal_repr(value), dist)
        for step, value in trial.intermediate_values.items():
            self.storage.set_trial_intermediate_value(mirrored, step, value)
        for key, value in trial.system_attrs.items():
            if have.system_attrs.get(key) != value:
                self.storage.set_trial_system_attr(mirrored, key, value)
        self.storage.set_trial_state_values(mirrored, trial.state, trial.values)
        self.open.discard(stored_id)


@contextlib.contextmanager
def _quiet():
    """Optuna's warnings about its experimental heartbeat and about ask/tell beside a heartbeat (beaten here)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def ask_batch(study, n: int, distributions: Mapping[str, Any]) -> list:
    """Ask ``n`` trials of ``study`` at once, every parameter of ``distributions`` sampled.

    Stale trials of dead workers are failed and enqueued again first
    (:func:`hamjax.tune.workers.fail_stale_trials`), waiting trials are taken
    before new ones are sampled, and new ones are sampled on the study's
    mirror and written one transaction each. Each returned trial is RUNNING in
    the storage and speaks Optuna's ``Trial`` API (``params``, ``number``,
    ``report``, ``should_prune``); finish them with :func:`tell_batch`.

    Args:
      study: an ``optuna.Study`` (any storage, any sampler).
      n: how many trials (>= 1).
      distributions: ``{name: optuna distribution}``, sampled for every trial.

    Returns:
      A list of ``n`` ``optuna.Trial``.

    Examples:
      >>> import optuna
      >>> from hamjax.tune.storage import create_or_load_study
      >>> study = create_or_load_study("sqlite:///:memory:", "demo", ["minimize"])
      >>> space = {"x": optuna.distributions.FloatDistribution(-1.0, 1.0)}
      >>> trials = ask_batch(study, 4, space)
      >>> tell_batch(study, trials, [t.params["x"] ** 2 for t in trials])
      >>> [t.state.name for t in study.trials]
      ['COMPLETE', 'COMPLETE', 'COMPLETE', 'COMPLETE']
    """

    from hamjax._checks import check_int

    n = check_int("ask_batch", "n", n, minimum=1)
    if not isinstance(distributions, Mapping) or not distributions:
        raise ValueError(
            f"ask_batch: distributions must be a non-empty mapping of optuna distributions, got {distributions!r}"
        )
    with _quiet():
        return _ask(study, n, distributions)


def _ask(study, n: int, distributions) -> list:
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    fail_stale_trials(study)
    if isinstance(storage, optuna.storages.InMemoryStorage):  # one process: Optuna's own ask costs nothing here
        return [study.ask(distributions) for _ in range(n)]
    worker, token = worker_identity(), uuid.uuid4().hex
    beating = heartbeat_interval(storage) is not None
    trials = study.get_trials(deepcopy=False)
    mirror = _MIRRORS.get(study)
    if mirror is None:
        mirror = _MIRRORS[study] = _Mirror(study)
    mirror.sync(trials)
    asked = []
    for waiting in (t for t in trials if t.state == TrialState.WAITING):
        if len(asked) == n:
            break
        taken = _take(study, mirror, waiting, distributions, {**worker, "ask": f"{token}-w{len(asked)}"}, beating)
        if taken is not None:
            asked.append(taken)
    if len(asked) < n:
        samples = [mirror.storage.get_trial(mirror.study.ask(distributions)._trial_id) for _ in range(n - len(asked))]
        templates = [
            optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params=sampled.params,
                distributions=sampled.distributions,
                user_attrs=sampled.user_attrs,
                system_attrs={**sampled.system_attrs, WORKER_ATTR: {**worker, "ask": f"{token}-{i}"}},
            )
            for i, sampled in enumerate(samples)
        ]
        for stored_id, sampled in zip(_create(study, templates, beating), samples, strict=True):
            mirror.ids[stored_id] = sampled._trial_id
            mirror.open.add(stored_id)
            asked.append(optuna.Trial(study, stored_id))
    interval = heartbeat_interval(storage)
    if interval is not None:
        beat = _BEATS.get(storage)
        if beat is None:
            beat = _BEATS[storage] = _Heartbeat(storage, interval)
        beat.add([t._trial_id for t in asked])
    return asked


def _take(study, mirror, waiting, distributions, worker: dict, beating: bool):
    """Take a WAITING trial (enqueued, or a dead worker's retried), its missing parameters sampled on the mirror.

    Returns its ``optuna.Trial``, or ``None`` when another worker took it first.
    Taking and recording the worker are two writes: a worker killed between
    them leaves the trial RUNNING with no worker and no heartbeat, which
    nothing can tell from a live one (:func:`hamjax.tune.workers.audit` names it).
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    try:
        if not storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    if beating:
        storage.record_heartbeat(waiting._trial_id)
    storage.set_trial_system_attr(waiting._trial_id, WORKER_ATTR, worker)
    # the stored values are kept; the mirror's sampler (never the study's own: one sampler
    # object serves one study) samples the rest, as study.ask would
    mirror.study.enqueue_trial({**waiting.params, **waiting.system_attrs.get("fixed_params", {})})
    sampled = mirror.storage.get_trial(mirror.study.ask(distributions)._trial_id)
    for name, value in sampled.params.items():
        if name not in waiting.params:
            dist = sampled.distributions[name]
            storage.set_trial_param(waiting._trial_id, name, dist.to_internal_repr(value), dist)
    mirror.ids[waiting._trial_id] = sampled._trial_id
    mirror.open.add(waiting._trial_id)
    return optuna.Trial(study, waiting._trial_id)


def _create(study, templates, heartbeat: bool = False) -> list[int]:
    """Write trials RUNNING with their parameters; their ids, in the order of ``templates``.

    A SQL storage takes them in one transaction, a journal file in two appends.
    """
    storage = study._storage
    ids = create_in_one_transaction(study, templates, heartbeat=heartbeat)
    if ids is not None:
        return ids
    if not hasattr(getattr(storage, "_backend", None), "deferred"):
        return [storage.create_new_trial(study._study_id, template_trial=t) for t in templates]
    # the first alone: the journal's replay learns from it which trials this process created
    storage.create_new_trial(study._study_id, template_trial=templates[0])
    with deferred_writes(storage):
        for template in templates[1:]:
            storage.create_new_trial(study._study_id, template_trial=template)
    # found again by their tokens: the ids of trials written in one append are only known once read back
    wanted = {t.system_attrs[WORKER_ATTR]["ask"]: i for i, t in enumerate(templates)}
    ids: list[int | None] = [None] * len(templates)
    for trial in reversed(study.get_trials(deepcopy=False)):
        worker = trial.system_attrs.get(WORKER_ATTR)
        slot = wanted.pop(worker.get("ask"), None) if isinstance(worker, dict) else None
        if slot is not None:
            ids[slot] = trial._trial_id
            if not wanted:
                break
    if wanted:
        raise RuntimeError(f"ask_batch: {len(wanted)} trials written to the journal were not read back")
    return ids


def _finished(values, state):
    from optuna.trial import TrialState

    if state is not None and state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        raise ValueError(f"tell_batch: states must be COMPLETE, PRUNED or FAIL, got {state!r}")
    if state in (TrialState.PRUNED, TrialState.FAIL):
        return state, None
    if values is None:
        return TrialState.FAIL, None
    values = [float(v) for v in (values if isinstance(values, Sequence) else [values])]
    if any(math.isnan(v) for v in values):
        return TrialState.FAIL, None  # a NaN trial fails; the study goes on
    return TrialState.COMPLETE, values


def tell_batch(study, trials: Sequence, values: Sequence, *, states: Sequence | None = None) -> None:
    """Finish trials asked by :func:`ask_batch`: one write each.

    A value that is NaN or ``None`` fails its trial (the study goes on); a
    PRUNED trial keeps its last reported value, as ``study.tell`` does.

    Args:
      study: the ``optuna.Study`` the trials came from.
      trials: the trials, as :func:`ask_batch` returned them.
      values: per trial a float, or a sequence of floats for several objectives.
      states: per trial an ``optuna.trial.TrialState`` (COMPLETE, PRUNED or
        FAIL); ``None``: COMPLETE (FAIL for a NaN).

    Examples:
      >>> import optuna
      >>> from hamjax.tune.storage import create_or_load_study
      >>> study = create_or_load_study(None, "nan", ["maximize"])
      >>> trials = ask_batch(study, 2, {"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
      >>> tell_batch(study, trials, [0.5, float("nan")])
      >>> [t.state.name for t in study.trials]
      ['COMPLETE', 'FAIL']
    """

    if len(values) != len(trials) or (states is not None and len(states) != len(trials)):
        raise ValueError(
            f"tell_batch: values and states must have one entry per trial ({len(trials)}), got {len(values)} values"
            + ("" if states is None else f" and {len(states)} states")
        )
    with _quiet():
        _tell(study, trials, values, states)


def _tell(study, trials, values, states) -> None:
    storage = study._storage
    mirror = _MIRRORS.get(study)
    with deferred_writes(storage):
        _finish_all(study, trials, values, states, mirror)
    beat = _BEATS.get(storage)
    if beat is not None:
        beat.discard([t._trial_id for t in trials])


def _finish_all(study, trials, values, states, mirror) -> None:
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    writes = []
    for i, trial in enumerate(trials):
        state, finished = _finished(values[i], None if states is None else states[i])
        if mirror is None or trial._trial_id not in mirror.ids:
            study.tell(trial, finished, state=state)
            continue
        mirrored = mirror.ids[trial._trial_id]
        if state == TrialState.PRUNED:
            reported = storage.get_trial(trial._trial_id).intermediate_values
            for step, value in reported.items():
                mirror.storage.set_trial_intermediate_value(mirrored, step, value)
            finished = [reported[max(reported)]] if reported else None
        before = dict(mirror.storage.get_trial(mirrored).system_attrs)
        try:
            mirror.study.tell(mirrored, None if state == TrialState.PRUNED else finished, state=state)
        except RuntimeError as error:  # GridSampler stops the study when its grid is done; the state is told
            if "Study.stop" not in str(error):
                raise
        for key, value in mirror.storage.get_trial(mirrored).system_attrs.items():
            if before.get(key) != value:  # what the sampler's after_trial recorded
                storage.set_trial_system_attr(trial._trial_id, key, value)
        writes.append((trial._trial_id, state, finished))
        mirror.open.discard(trial._trial_id)
    if writes and not finish_in_one_transaction(study, writes):
        for trial_id, state, finished in writes:
            # failed as stale by another worker meanwhile and enqueued again: the retry counts
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_state_values(trial_id, state=state, values=finished)
