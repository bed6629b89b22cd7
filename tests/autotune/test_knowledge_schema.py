"""The knowledge base's engines and tables: URLs, SQLite's write locking, schema creation by racing writers, trust."""

import concurrent.futures
import sqlite3
import sys

import pytest

from hamjax.autotune import knowledge_merge
from hamjax.autotune.knowledge_schema import SCHEMA_VERSION, Schema, default_url, engine_for, open_error


def test_urls_and_drivers(tmp_path, monkeypatch):
    assert engine_for("postgres://kb@db/x").url.drivername == "postgresql+psycopg"
    assert engine_for("postgresql+psycopg2://kb@db/x").url.drivername == "postgresql+psycopg"
    assert engine_for(f"sqlite:///{tmp_path}/kb.db", read_only=True).url.database == f"file:{tmp_path}/kb.db"
    with pytest.raises(ValueError, match=r"got 'redis://u:\*\*\*@h/0'"):
        engine_for("redis://u:s3cret@h/0")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ValueError, match="a PostgreSQL knowledge base needs psycopg 3"):
        engine_for("postgresql://kb@db/x")
    error = open_error("postgresql://kb:s3cret@h/x", "read", RuntimeError("password s3cret refused"))
    assert str(error) == "KnowledgeBase: cannot read postgresql://kb:***@h/x: password *** refused"


def test_default_url_under_the_data_dir_or_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HAMJAX_DATA_DIR", str(tmp_path / "data"))
    assert default_url() == f"sqlite:///{tmp_path / 'data' / 'knowledge.db'}"
    assert (tmp_path / "data").is_dir()
    monkeypatch.delenv("HAMJAX_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite:///{tmp_path / 'home' / '.local' / 'share' / 'hamjax' / 'knowledge.db'}"


def test_sqlite_writers_queue_and_readers_go_on(tmp_path):
    url = f"sqlite:///{tmp_path / 'kb.db'}"
    schema, engine = Schema(), engine_for(url)
    assert schema.prepare(engine, create=True) == SCHEMA_VERSION
    with schema.writer(engine) as writing:
        schema.judge(writing, "lab", False, 1.0)
        # the writer holds the write lock from its BEGIN IMMEDIATE: another writer waits, a reader does not
        other = sqlite3.connect(tmp_path / "kb.db", timeout=0.05)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        with engine.connect() as reading:
            assert schema.trusts(reading) == {}  # not committed yet
    with engine.connect() as reading:
        assert schema.trusts(reading) == {"lab": pytest.approx(knowledge_merge.updated_trust(0.8, False))}
    other.close()


def test_racing_writers_create_the_tables_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'kb.db'}"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: Schema().prepare(engine_for(url), create=True), range(4)))
    assert versions == [SCHEMA_VERSION] * 4
    with sqlite3.connect(tmp_path / "kb.db") as conn:
        assert conn.execute("SELECT name, version FROM hamjax_knowledge_schema").fetchall() == [("knowledge", 1)]


def test_racing_writers_create_the_postgresql_tables_once(postgresql_url):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: Schema().prepare(engine_for(postgresql_url), create=True), range(4)))
    assert versions == [SCHEMA_VERSION] * 4
    read_only = engine_for(postgresql_url, read_only=True)
    schema = Schema()
    assert schema.prepare(read_only, create=False) == SCHEMA_VERSION
    with pytest.raises(Exception, match="read-only transaction"), schema.writer(read_only) as connection:
        schema.judge(connection, "lab", True, 1.0)
