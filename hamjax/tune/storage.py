"""Where a study lives: Optuna storages opened by URL, studies created or resumed, dead workers' trials retried.

One URL names every storage a study can use, for one process or many:

| URL | storage | for |
| --- | --- | --- |
| ``None`` | in memory | one process, nothing kept |
| ``sqlite:///hamjax-tune.db`` | SQLite through SQLAlchemy, WAL journal | one machine; the CLI's default |
| ``journal:///tune.log`` or a path ending in ``.log`` | Optuna's journal file | several processes on one machine |
| ``postgresql://user:pw@host/db`` | PostgreSQL through SQLAlchemy and psycopg 3 | many machines |

As with SQLAlchemy, ``sqlite:///x`` and ``journal:///x`` are relative paths and
``journal:////tmp/x.log`` an absolute one. The SQL storages beat a heartbeat
for every running trial; a trial whose worker stopped beating (killed, its
machine lost) is failed after the grace period and enqueued again with its
parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``). On one machine a
dead worker is also seen at once: every trial records the process that runs
it, and :func:`hamjax.tune.workers.fail_stale_trials` fails the trials of processes that are gone
(the only way for the journal file, which has no heartbeat). ``optuna-dashboard
URL`` opens the same SQL storage (``optuna-dashboard sqlite:///hamjax-tune.db``);
for a journal file, ``optuna-dashboard tune.log``.

A SQLite file runs in WAL mode with ``synchronous=NORMAL``: a commit does not
wait for the disk, so a power cut may lose the last trials, never the file.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import os
import re
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

# The retry callback and the recovery lock of each journal storage that open_storage made
# (JournalStorage has no heartbeat, so it cannot carry them itself).
_JOURNALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# The system attr in which a trial records the worker process that runs it (hamjax.tune.workers).
WORKER_ATTR = "hamjax:worker"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (in the netloc and in a ``password=`` query).

    Args:
      url: a storage URL.

    Returns:
      The URL, safe to print.

    Examples:
      >>> redact("postgresql://tune:s3cret@db.example:5432/studies")
      'postgresql://tune:***@db.example:5432/studies'
      >>> redact("postgresql://db/studies?user=tune&password=s3cret")
      'postgresql://db/studies?user=tune&password=***'
      >>> redact("sqlite:///hamjax-tune.db")
      'sqlite:///hamjax-tune.db'
    """
    url = re.sub(r"(://[^/@:]*:)[^/]*@", r"\1***@", str(url))
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


class FileLock:
    """An ``fcntl`` lock on a file, for Optuna's journal file backend (processes of one machine).

    The kernel releases it when its process dies, so a worker killed while
    writing never leaves a stale lock behind (Optuna's own file locks wait for a
    grace period instead).

    Args:
      path: the lock file (created if missing).
    """

    def __init__(self, path: str):
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Block until this process holds the lock; returns True."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def deferred_writes(storage):
    """A context in which ``storage``'s journal appends its log lines at once, on exit (one lock, one fsync).

    Only for what needs no read-back inside the context (finishing trials,
    creating trials found again by a token afterwards; not a study, nor the
    first trial a process creates); for any storage other
    than a journal file opened by :func:`open_storage`, a context that does
    nothing.

    Args:
      storage: an Optuna storage.

    Returns:
      A context manager.

    Examples:
      >>> import tempfile, os
      >>> journal = open_storage(os.path.join(tempfile.mkdtemp(), "d.log"))
      >>> study_id = journal.create_new_study([])
      >>> with deferred_writes(journal):
      ...     journal.set_study_user_attr(study_id, "note", "later")
      ...     journal.get_study_user_attrs(study_id)
      {}
      >>> journal.get_study_user_attrs(study_id)
      {'note': 'later'}
    """
    deferred = getattr(getattr(storage, "_backend", None), "deferred", None)
    return deferred() if callable(deferred) else contextlib.nullcontext()


@functools.cache
def _journal_file():
    from optuna.storages.journal import JournalFileBackend

    class JournalFile(JournalFileBackend):
        """Optuna's journal file backend whose appends can be gathered (:func:`deferred_writes`)."""

        def __init__(self, path: str, lock: FileLock):
            super().__init__(path, lock_obj=lock)
            self._gathered: list | None = None

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            if self._gathered is not None:
                self._gathered.extend(logs)
            else:
                super().append_logs(logs)

        @contextlib.contextmanager
        def deferred(self):
            if self._gathered is not None:  # nested: the outer context writes
                yield
                return
            self._gathered = []
            try:
                yield
            finally:
                logs, self._gathered = self._gathered, None
                if logs:
                    super().append_logs(logs)

    return JournalFile


@functools.cache
def _retry_callback_class():
    import optuna

    class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
        """Optuna's retry of a stale trial, without the dead worker's record: the retry is nobody's until asked."""

        def __call__(self, study, trial) -> None:
            trial = copy.copy(trial)
            trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != WORKER_ATTR}
            super().__call__(study, trial)

    return RetryStaleTrial


def _journal_path(url: str) -> str | None:
    if url.startswith("journal:///"):
        return url[len("journal:///") :]
    if "://" not in url and url.endswith(".log"):
        return url
    return None


def _open_error(url: str, error: BaseException) -> ValueError:
    reason = " ".join(str(error).split()) or type(error).__name__
    password = re.search(r"://[^/@:]*:([^/]*)@", url)
    if password and password.group(1):
        reason = reason.replace(password.group(1), "***")
    return ValueError(f"open_storage: cannot open storage {redact(url)}: {reason[:300]}")


def _wal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_storage(
    url: str | None,
    *,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
):
    """The Optuna storage a URL names (see the module docstring for the table).

    Args:
      url: ``None`` (in memory), ``sqlite:///path.db``, ``journal:///path.log``
        or a path ending in ``.log``, ``postgresql://...`` (psycopg 3 is used
        whatever driver the URL names: ``postgresql+psycopg://`` is the same).
      heartbeat_interval: seconds between the heartbeats of a running trial (SQL storages).
      grace_period: seconds without a heartbeat after which a running trial is
        failed and retried; ``None``: twice ``heartbeat_interval``.
      max_retry: how often a trial of a dead worker is enqueued again; ``None``: always.

    Returns:
      An ``optuna.storages.BaseStorage``: pass it to :func:`create_or_load_study` or ``optuna.create_study``.

    Raises:
      ValueError: an unknown scheme, or a storage that cannot be opened; the
        message names the URL without its password.

    Examples:
      >>> import tempfile, os
      >>> folder = tempfile.mkdtemp()
      >>> type(open_storage(None)).__name__
      'InMemoryStorage'
      >>> type(open_storage(f"sqlite:///{folder}/t.db")).__name__
      'RDBStorage'
      >>> type(open_storage(os.path.join(folder, "t.log"))).__name__
      'JournalStorage'
      >>> open_storage("mysql://tune:pw@localhost/x")
      Traceback (most recent call last):
      ...
      ValueError: open_storage: url must start with sqlite:///, journal:///, postgresql:// or end in .log, got 'mysql://tune:***@localhost/x'
    """
    import optuna

    from hamjax._checks import check_int

    heartbeat_interval = check_int("open_storage", "heartbeat_interval", heartbeat_interval, minimum=1)
    if grace_period is not None:
        grace_period = check_int("open_storage", "grace_period", grace_period, minimum=heartbeat_interval)
    if max_retry is not None:
        max_retry = check_int("open_storage", "max_retry", max_retry, minimum=0)
    if url is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(url, str) or not url:
        raise ValueError(f"open_storage: url must be a storage URL string or None, got {url!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = _retry_callback_class()(max_retry=max_retry)
    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalStorage

        try:
            folder = os.path.dirname(os.path.abspath(journal))
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"no folder {folder}")
            storage = JournalStorage(_journal_file()(journal, FileLock(journal + ".lock")))
        except Exception as error:
            raise _open_error(url, error) from None
        _JOURNALS[storage] = (retry, journal + ".recover.lock")
        return storage
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        rdb_url = "postgresql+psycopg://" + url.split("://", 1)[1]
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    elif scheme == "sqlite":
        rdb_url, engine_kwargs = url, {"connect_args": {"timeout": 60}}
    else:
        raise ValueError(
            "open_storage: url must start with sqlite:///, journal:///, postgresql:// or end in .log, "
            f"got {redact(url)!r}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                rdb_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=retry,
            )
    except Exception as error:
        raise _open_error(url, error) from None
    if scheme == "sqlite" and url not in ("sqlite://", "sqlite:///:memory:"):
        import sqlalchemy

        sqlalchemy.event.listen(storage.engine, "connect", _wal)
        storage.engine.dispose()  # the connections opened so far lack the pragmas
    return storage


def _as_storage(storage):
    import optuna

    if storage is None or isinstance(storage, str):
        return open_storage(storage)
    if not isinstance(storage, optuna.storages.BaseStorage):
        raise ValueError(f"create_or_load_study: storage must be a URL, None or an optuna storage, got {storage!r}")
    return storage


def create_or_load_study(
    storage,
    study_name: str,
    directions: Sequence[str],
    *,
    sampler=None,
    pruner=None,
):
    """A study of ``storage``: created with ``directions``, or loaded (resumed) if it exists.

    Args:
      storage: an Optuna storage (from :func:`open_storage`), a URL, or ``None`` (in memory).
      study_name: the study's name in the storage.
      directions: one of ``"minimize"``/``"maximize"`` per objective.
      sampler: an Optuna sampler (``None``: Optuna's default).
      pruner: an Optuna pruner (``None``: Optuna's default).

    Returns:
      An ``optuna.Study``.

    Raises:
      ValueError: ``directions`` empty or not minimize/maximize, or a stored study
        of that name whose directions differ.

    Examples:
      >>> storage = open_storage(None)
      >>> study = create_or_load_study(storage, "demo", ["maximize"])
      >>> create_or_load_study(storage, "demo", ["maximize"]).study_name
      'demo'
      >>> create_or_load_study(storage, "demo", ["maximize", "minimize"])
      Traceback (most recent call last):
      ...
      ValueError: create_or_load_study: study 'demo' has directions ['maximize'], not the requested ['maximize', 'minimize']
    """
    import optuna

    if not isinstance(study_name, str) or not study_name:
        raise ValueError(f"create_or_load_study: study_name must be a non-empty string, got {study_name!r}")
    if isinstance(directions, str) or not directions:
        raise ValueError(
            f"create_or_load_study: directions must be a non-empty list of 'minimize'/'maximize', got {directions!r}"
        )
    wanted = [str(d).lower() for d in directions]
    if any(d not in ("minimize", "maximize") for d in wanted):
        raise ValueError(
            f"create_or_load_study: directions must each be 'minimize' or 'maximize', got {list(directions)!r}"
        )
    storage = _as_storage(storage)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=wanted,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != wanted:
        raise ValueError(
            f"create_or_load_study: study {study_name!r} has directions {stored}, not the requested {wanted}"
        )
    return study


def retry_callback(storage):
    """The callback that enqueues a stale trial again for ``storage`` (``None`` where there is none).

    Args:
      storage: an Optuna storage (a study's ``_storage`` included).

    Returns:
      Optuna's ``RetryHeartbeatStaleTrialCallback`` that :func:`open_storage` gave it, or ``None``.

    Examples:
      >>> retry_callback(open_storage(None)) is None
      True
    """
    if storage in _JOURNALS:
        return _JOURNALS[storage][0]
    get = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    return get() if callable(get) else None


@contextlib.contextmanager
def recovery_lock(storage):
    """Hold, across the processes of this machine, the lock under which stale trials of a journal file are failed.

    SQL storages refuse to finish a trial twice; a journal file does not, so
    two workers failing the same dead trial must take turns. For any other
    storage, a context that does nothing.

    Args:
      storage: an Optuna storage.

    Examples:
      >>> with recovery_lock(open_storage(None)):
      ...     pass
    """
    entry = _JOURNALS.get(storage)
    if entry is None:
        yield
        return
    lock = FileLock(entry[1])
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
