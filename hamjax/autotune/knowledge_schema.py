"""The knowledge base's tables and engines: SQLAlchemy 2 Core over SQLite or PostgreSQL (psycopg 3).

Three tables: ``hamjax_knowledge_schema`` (the schema version),
``hamjax_knowledge_records`` (one row per record: its dicts as JSON, the
signature key, family, source, time and recipe key indexed) and
``hamjax_knowledge_sources`` (the trust in each source). SQLite runs in WAL
mode with a 60 s busy timeout, and a transaction that writes starts with
``BEGIN IMMEDIATE``, so concurrent writers queue instead of failing when a
reader turns writer; on PostgreSQL a source's trust is read ``FOR UPDATE``.
SQLAlchemy is imported inside the functions (``import hamjax`` stays light).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from hamjax.autotune import knowledge_merge
from hamjax.autotune.knowledge_record import FIELDS, Record
from hamjax.tune.storage import redact

SCHEMA_VERSION = 1
"""The version of the tables this hamjax writes; a base of a newer version is refused."""

_WRITE = "hamjax_knowledge_write"  # the execution option that makes a SQLite transaction BEGIN IMMEDIATE
_COLUMNS = ("id", "signature_key", "family", "source", "time", "recipe_key", "confidence",
            "signature", "recipe", "results", "environment")  # fmt: skip
_JSON = ("signature", "recipe", "results", "environment")


def default_url() -> str:
    """The SQLite file a knowledge base uses by default (its folder is created).

    Examples:
      >>> import os, tempfile
      >>> os.environ["HAMJAX_DATA_DIR"] = tempfile.mkdtemp()
      >>> default_url().endswith("/knowledge.db")
      True
      >>> del os.environ["HAMJAX_DATA_DIR"]
    """
    folder = Path(os.environ.get("HAMJAX_DATA_DIR") or Path.home() / ".local" / "share" / "hamjax")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'knowledge.db'}"


class KnowledgeBaseError(ValueError):
    """A knowledge base that cannot be opened, read or written (the message names its URL, never a password)."""


def open_error(url: str, doing: str, error: BaseException) -> KnowledgeBaseError:
    """A :class:`KnowledgeBaseError` for a failure on ``url``, its password hidden in the URL and in the reason.

    Examples:
      >>> str(open_error("postgresql://kb:pw1@h/x", "open knowledge base", OSError("bad password pw1")))
      'KnowledgeBase: cannot open knowledge base postgresql://kb:***@h/x: bad password ***'
    """
    reason = " ".join(str(getattr(error, "orig", None) or error).split()) or type(error).__name__
    password = re.search(r"://[^/@:]*:([^/]*)@", url)
    if password and password.group(1):
        reason = reason.replace(password.group(1), "***")
    return KnowledgeBaseError(f"KnowledgeBase: cannot {doing} {redact(url)}: {reason[:300]}")


def _sqlite_connect(read_only: bool):
    def on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's begin event emits BEGIN itself
        if not read_only:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return on_connect


def _sqlite_begin(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(_WRITE) else "BEGIN")


def engine_for(url: str, *, read_only: bool = False):
    """A SQLAlchemy engine for a knowledge-base URL (nothing is connected yet).

    Args:
      url: ``sqlite://`` (in memory), ``sqlite:///path.db`` or ``postgresql://...``.
      read_only: open a SQLite file read-only (``mode=ro``), a PostgreSQL
        session with read-only transactions.

    Returns:
      A ``sqlalchemy.Engine``.

    Raises:
      ValueError: any other scheme (the message hides the password).

    Examples:
      >>> engine_for("sqlite://").dialect.name
      'sqlite'
      >>> engine_for("mysql://kb:s3cret@db/x")
      Traceback (most recent call last):
      ...
      ValueError: url must start with sqlite:// or postgresql://, got 'mysql://kb:***@db/x'
    """
    import sqlalchemy
    from sqlalchemy import event

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        connect_args = {"connect_timeout": 10}
        if read_only:
            connect_args["options"] = "-c default_transaction_read_only=on"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ValueError("a PostgreSQL knowledge base needs psycopg 3: pip install 'hamjax[tune]'") from None
        return sqlalchemy.create_engine(
            "postgresql+psycopg://" + url.split("://", 1)[1], pool_pre_ping=True, connect_args=connect_args
        )
    if scheme != "sqlite":
        raise ValueError(f"url must start with sqlite:// or postgresql://, got {redact(url)!r}")
    if url in ("sqlite://", "sqlite:///:memory:"):
        engine = sqlalchemy.create_engine(
            "sqlite://", poolclass=sqlalchemy.pool.StaticPool, connect_args={"check_same_thread": False}
        )
    elif read_only:
        path = url[len("sqlite:///") :]
        engine = sqlalchemy.create_engine(
            f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": 60, "check_same_thread": False}
        )
    else:
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
    event.listen(engine, "connect", _sqlite_connect(read_only))
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def row_of(record: Record, id_: str, signature_key: str) -> dict:
    """The table row of a record: its fields, its id, and the signature and recipe keys it is found by."""
    fields = {name: getattr(record, name) for name in FIELDS}
    return {**fields, "id": id_, "signature_key": str(signature_key), "recipe_key": record.recipe_key}


def record_of(row) -> Record:
    """The record a table row holds (checked again: a row written by hand is refused like a bad line)."""
    return Record(**{name: row[name] for name in (*FIELDS, "id")})


@functools.cache
def _tables():
    from sqlalchemy import JSON, Column, Float, Integer, MetaData, String, Table

    metadata = MetaData()
    version = Table(
        "hamjax_knowledge_schema",
        metadata,
        Column("name", String(64), primary_key=True),
        Column("version", Integer, nullable=False),
    )
    records = Table(
        "hamjax_knowledge_records",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("signature_key", String(128), nullable=False, index=True),
        Column("family", String(200), nullable=False, index=True),
        Column("source", String(200), nullable=False, index=True),
        Column("time", Float, nullable=False, index=True),
        Column("recipe_key", String(64), nullable=False, index=True),
        Column("confidence", Float, nullable=False),
        Column("signature", JSON, nullable=False),
        Column("recipe", JSON, nullable=False),
        Column("results", JSON, nullable=False),
        Column("environment", JSON, nullable=False),
    )
    sources = Table(
        "hamjax_knowledge_sources",
        metadata,
        Column("source", String(200), primary_key=True),
        Column("trust", Float, nullable=False),
        Column("correct", Integer, nullable=False),
        Column("wrong", Integer, nullable=False),
        Column("time", Float, nullable=False),
    )
    return metadata, version, records, sources


def _insert(connection, table):
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


class Schema:
    """The knowledge base's statements, each run on a connection the caller holds (one transaction per write)."""

    def __init__(self):
        self.metadata, self.version, self.table, self.sources = _tables()

    @contextlib.contextmanager
    def writer(self, engine):
        """A connection in a write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on exit."""
        with engine.execution_options(**{_WRITE: True}).begin() as connection:
            yield connection

    def prepare(self, engine, *, create: bool) -> int:
        """Create the tables if missing (with ``create``) and return the stored schema version.

        Two processes creating the tables of an empty PostgreSQL database at
        once may collide; the loser tries again.

        Raises:
          RuntimeError: read-only and the database holds no knowledge base.
          sqlalchemy errors: an unreachable or corrupt database.
        """
        import sqlalchemy
        from sqlalchemy import select

        query = select(self.version.c.version).where(self.version.c.name == "knowledge")
        if not create:
            with engine.connect() as connection:
                if not sqlalchemy.inspect(connection).has_table(self.version.name):
                    raise RuntimeError("it holds no knowledge base")
                found = connection.execute(query).scalar()
            return SCHEMA_VERSION if found is None else int(found)
        for attempt in range(6):
            try:
                with self.writer(engine) as connection:
                    self.metadata.create_all(connection, checkfirst=True)
                    found = connection.execute(query).scalar()
                    if found is None:
                        connection.execute(self.version.insert().values(name="knowledge", version=SCHEMA_VERSION))
                        found = SCHEMA_VERSION
                return int(found)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
                if attempt == 5 or not ("already exists" in str(error) or "duplicate key" in str(error)):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def insert_new(self, connection, rows: Sequence[dict]) -> int:
        """Insert the rows whose id is not stored yet (a concurrent insert of the same id is ignored); how many."""
        if not rows:
            return 0
        known = self.known_ids(connection, [row["id"] for row in rows])
        fresh = [row for row in rows if row["id"] not in known]
        if fresh:
            connection.execute(_insert(connection, self.table).on_conflict_do_nothing(index_elements=["id"]), fresh)
        return len(fresh)

    def known_ids(self, connection, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored."""
        from sqlalchemy import select

        known: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            known.update(connection.execute(select(self.table.c.id).where(self.table.c.id.in_(chunk))).scalars())
        return known

    def select(self, connection, **filters) -> list[dict]:
        """The rows whose columns equal the given values (``None`` filters nothing), oldest first.

        The JSON columns are parsed row by row, so one row damaged outside
        hamjax does not hide the others: its ``"problem"`` says what is wrong.
        """
        from sqlalchemy import Text, select, type_coerce

        query = select(*(type_coerce(self.table.c[n], Text) if n in _JSON else self.table.c[n] for n in _COLUMNS))
        for name, value in filters.items():
            if value is not None:
                query = query.where(self.table.c[name] == value)
        query = query.order_by(self.table.c.time, self.table.c.id)
        rows = []
        for mapping in connection.execute(query).mappings():
            row = {name: mapping[name] for name in _COLUMNS}
            for name in _JSON:
                if isinstance(row[name], str):  # SQLite keeps text; psycopg parses PostgreSQL's json itself
                    try:
                        row[name] = json.loads(row[name])
                    except ValueError:
                        row["problem"] = f"{name} is not valid JSON"
            rows.append(row)
        return rows

    def trusts(self, connection) -> dict[str, float]:
        """The trust in every source judged so far."""
        from sqlalchemy import select

        return {row.source: float(row.trust) for row in connection.execute(select(self.sources))}

    def judge(self, connection, source: str, wrong: bool, similarity: float) -> float:
        """Move a source's trust after one of its records was judged (in the caller's transaction); the new trust."""
        from sqlalchemy import select

        now = time.time()
        fresh = {"source": source, "trust": knowledge_merge.DEFAULT_TRUST, "correct": 0, "wrong": 0, "time": now}
        connection.execute(_insert(connection, self.sources).on_conflict_do_nothing(index_elements=["source"]), fresh)
        row = connection.execute(select(self.sources).where(self.sources.c.source == source).with_for_update()).one()
        trust = knowledge_merge.updated_trust(float(row.trust), wrong, similarity)
        connection.execute(
            self.sources.update()
            .where(self.sources.c.source == source)
            .values(trust=trust, correct=row.correct + (not wrong), wrong=row.wrong + bool(wrong), time=now)
        )
        return trust
