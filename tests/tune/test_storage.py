"""hamjax.tune.storage: storages by URL, studies created or resumed, trials of dead workers failed and retried."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import FloatDistribution

from hamjax.tune import storage as st
from hamjax.tune import workers as wk

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x": FloatDistribution(-1.0, 1.0)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://tune:s3cret@db:5432/x", "postgresql://tune:***@db:5432/x"),
        ("postgresql+psycopg://tune:p@ss@db/x", "postgresql+psycopg://tune:***@db/x"),
        (
            "postgresql://db/x?user=u&password=s3cret&sslmode=require",
            "postgresql://db/x?user=u&password=***&sslmode=require",
        ),
        ("postgresql://tune@db/x", "postgresql://tune@db/x"),
        ("journal:///tune.log", "journal:///tune.log"),
    ],
)
def test_redact_hides_the_password_only(url, shown):
    assert st.redact(url) == shown


def test_in_memory_sqlite_and_journal_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(st.open_storage(None), optuna.storages.InMemoryStorage)
    sql = st.open_storage("sqlite:///relative.db")
    assert isinstance(sql, optuna.storages.RDBStorage)
    assert sql.get_heartbeat_interval() == 60
    st.create_or_load_study(sql, "s", ["minimize"])
    # WAL mode is a property of the file: a plain sqlite3 connection sees it
    assert sqlite3.connect(tmp_path / "relative.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for url, path in [
        ("journal:///relative.log", tmp_path / "relative.log"),
        (f"journal:///{tmp_path}/absolute.log", tmp_path / "absolute.log"),
        (str(tmp_path / "plain.log"), tmp_path / "plain.log"),
    ]:
        journal = st.open_storage(url)
        assert isinstance(journal, optuna.storages.JournalStorage)
        assert path.exists()
        assert wk.heartbeat_interval(journal) is None


def test_unopenable_and_unknown_urls_name_the_url_without_password(tmp_path):
    with pytest.raises(ValueError, match=r"^open_storage: cannot open storage sqlite:///.*missing/t\.db: ") as info:
        st.open_storage(f"sqlite:///{tmp_path}/missing/t.db")
    assert len(str(info.value).splitlines()) == 1
    with pytest.raises(ValueError, match="cannot open storage journal:///") as info:
        st.open_storage(f"journal:///{tmp_path}/missing/t.log")
    url = f"postgresql://tune:s3cret@127.0.0.1:{_free_port()}/studies"
    with pytest.raises(ValueError, match=r"cannot open storage postgresql://tune:\*\*\*@127\.0\.0\.1") as info:
        st.open_storage(url)
    assert "s3cret" not in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    with pytest.raises(ValueError, match=r"url must start with .* got 'redis://u:\*\*\*@h/0'"):
        st.open_storage("redis://u:pw@h/0")
    with pytest.raises(ValueError, match="heartbeat_interval must be an integer >= 1"):
        st.open_storage(None, heartbeat_interval=0)
    with pytest.raises(ValueError, match="grace_period must be an integer >= 5"):
        st.open_storage(None, heartbeat_interval=5, grace_period=2)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "journal"])
def test_a_study_resumes_and_refuses_other_directions(kind, tmp_path):
    url = {"memory": None, "sqlite": f"sqlite:///{tmp_path}/t.db", "journal": f"journal:///{tmp_path}/t.log"}[kind]
    storage = st.open_storage(url)
    study = st.create_or_load_study(storage, "s", ["maximize", "minimize"])
    study.add_trial(optuna.create_trial(params={"x": 0.5}, distributions=SPACE, values=[1.0, 2.0]))
    again = st.create_or_load_study(storage if url is None else st.open_storage(url), "s", ["MAXIMIZE", "minimize"])
    assert [t.values for t in again.trials] == [[1.0, 2.0]]
    with pytest.raises(
        ValueError, match=r"study 's' has directions \['maximize', 'minimize'\], not the requested \['minimize'\]"
    ):
        st.create_or_load_study(storage, "s", ["minimize"])
    with pytest.raises(ValueError, match="directions must each be 'minimize' or 'maximize'"):
        st.create_or_load_study(storage, "t", ["up"])
    with pytest.raises(ValueError, match="directions must be a non-empty list"):
        st.create_or_load_study(storage, "t", [])


def test_file_lock_excludes_other_processes(tmp_path):
    lock = st.FileLock(str(tmp_path / "l.lock"))
    lock.acquire()
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)"
    )
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "l.lock")], check=False).returncode == 3
    lock.release()
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "l.lock")], check=False).returncode == 0


def test_postgresql_storage_round_trip(postgresql_url):
    storage = st.open_storage(postgresql_url, heartbeat_interval=5)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.engine.dialect.driver == "psycopg"
    study = st.create_or_load_study(storage, "pg", ["maximize"])
    study.add_trial(optuna.create_trial(params={"x": 0.5}, distributions=SPACE, value=0.9))
    same = st.create_or_load_study(postgresql_url.replace("postgresql://", "postgresql+psycopg://"), "pg", ["maximize"])
    assert same.best_value == 0.9
    with pytest.raises(ValueError, match="has directions"):
        st.create_or_load_study(postgresql_url, "pg", ["minimize"])
