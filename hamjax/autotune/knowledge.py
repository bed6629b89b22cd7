"""The knowledge base: what recipes measured on which models, in SQLite or PostgreSQL, shared as JSON lines.

| URL | where | for |
| --- | --- | --- |
| ``None`` | ``knowledge.db`` under ``$HAMJAX_DATA_DIR`` or ``~/.local/share/hamjax`` | one user |
| ``sqlite:///path.db`` | a SQLite file (WAL journal, 60 s busy timeout) | one machine, many processes |
| ``postgresql://user:pw@host/db`` | PostgreSQL through SQLAlchemy and psycopg 3 | a team |

Each :class:`~hamjax.autotune.knowledge_record.Record` is one row: its dicts
as JSON columns, with the signature key, family, source, time and recipe key
indexed. Ids are uuid4 hex, so writers on many machines never collide, and
every write is one transaction, so concurrent writers lose nothing. A table
holds the schema version: a base written by a newer hamjax is refused, naming
both versions. A second table holds the trust in each source
(:mod:`hamjax.autotune.knowledge_merge` says how records merge and how trust moves).

:meth:`KnowledgeBase.open` with ``fallback="read_only"`` never stops a run:
a base that cannot be written is opened read-only, and one that cannot be read
at all is replaced by an empty one; :attr:`KnowledgeBase.warnings` says which.

Examples:
  >>> import tempfile
  >>> from hamjax.autotune.knowledge import KnowledgeBase, Record
  >>> from hamjax.autotune.signature import Signature
  >>> sig = Signature("mlp", (), 1000, (64,), "vector", 10, 2, dense=2, dense_params=1000)
  >>> kb = KnowledgeBase(f"sqlite:///{tempfile.mkdtemp()}/kb.db")
  >>> recipe = {"steps": [{"kind": "quantize"}, {"kind": "export", "precisions": "int8"}]}
  >>> record = Record(sig.to_dict(), "mlp", recipe, {"accuracy_drop": 0.2, "size_reduction": 3.9,
  ...                 "feasible": True}, {"device": "cpu"}, 1.7e9, "lab")
  >>> len(kb.add(record)), len(kb.records(family="mlp"))
  (32, 1)
  >>> [(round(weight, 2), reason) for _, weight, reason in kb.suggest(sig, now=1.7e9)]
  [(0.4, '1 record from 1 source (mean similarity 1.00, 1 agree): accuracy drop 0.20 points, 3.9x smaller; feasible')]
"""

from __future__ import annotations

import contextlib
import os
import time as clock
import uuid
from collections.abc import Iterable
from typing import Any

from hamjax._checks import check_choice, check_int, check_number
from hamjax.autotune import knowledge_merge
from hamjax.autotune.knowledge_io import ImportReport, export_jsonl, read_jsonl
from hamjax.autotune.knowledge_record import Record, check_results, recipe_key
from hamjax.autotune.knowledge_schema import (
    SCHEMA_VERSION,
    KnowledgeBaseError,
    Schema,
    default_url,
    engine_for,
    open_error,
    record_of,
    row_of,
)
from hamjax.tune.storage import redact

__all__ = [
    "SCHEMA_VERSION",
    "ImportReport",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "Record",
    "default_url",
    "recipe_key",
]


def _database_errors() -> tuple[type[BaseException], ...]:
    """What a database failure raises (SQLAlchemy is imported late, so ``import hamjax`` stays light)."""
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError, OSError, RuntimeError


class KnowledgeBase:
    """Records of what recipes measured, looked up by signature similarity and merged into advice.

    Args:
      url: ``None`` (the default SQLite file, :func:`default_url`),
        ``sqlite:///path.db`` or ``postgresql://...`` (psycopg 3 whatever
        driver the URL names).
      read_only: open without creating or writing anything; writes raise.

    Attributes:
      url: the URL, its password replaced by ``***``.
      read_only: whether writes are refused.
      warnings: what the base could not do when opened (see :meth:`open`), and stored records it skipped.

    Raises:
      KnowledgeBaseError: an unreachable or corrupt base, or one written by a
        newer schema version (the message names both versions).
    """

    def __init__(self, url: str | None = None, *, read_only: bool = False):
        if url is not None and (not isinstance(url, str) or not url):
            raise ValueError(f"KnowledgeBase: url must be a database URL string or None, got {url!r}")
        try:
            url = default_url() if url is None else url
        except OSError as error:
            raise KnowledgeBaseError(f"KnowledgeBase: cannot make the default folder: {error}") from None
        self._raw_url, self.url, self.read_only = url, redact(url), bool(read_only)
        self.warnings: tuple[str, ...] = ()
        try:
            self._engine = engine_for(url, read_only=self.read_only)
        except ValueError as error:
            raise KnowledgeBaseError(f"KnowledgeBase: {error}") from None
        self._schema = Schema()
        try:
            found = self._schema.prepare(self._engine, create=not self.read_only)
        except _database_errors() as error:
            self._engine.dispose()
            raise open_error(url, "open knowledge base", error) from None
        if found > SCHEMA_VERSION:
            self._engine.dispose()
            raise KnowledgeBaseError(
                f"KnowledgeBase: {self.url} was written by schema version {found}; this hamjax reads version "
                f"{SCHEMA_VERSION} at most: upgrade hamjax"
            )

    @classmethod
    def open(cls, url: str | None = None, *, fallback: str = "raise") -> KnowledgeBase:
        """A knowledge base, falling back as ``fallback`` says where it cannot be opened for writing.

        Args:
          url: as for :class:`KnowledgeBase`.
          fallback: ``"raise"`` (any failure raises), or ``"read_only"``: a
            base that cannot be opened for writing is opened read-only, and
            one that cannot be read is replaced by an empty in-memory base, so
            a run goes on without the base's memory and nothing it learns is
            kept; ``warnings`` says which.

        Returns:
          The :class:`KnowledgeBase`.

        Raises:
          KnowledgeBaseError: with ``fallback="raise"``, as the constructor.

        Examples:
          >>> import tempfile
          >>> corrupt = f"{tempfile.mkdtemp()}/corrupt.db"
          >>> _ = open(corrupt, "wb").write(b"not a database" * 100)
          >>> kb = KnowledgeBase.open(f"sqlite:///{corrupt}", fallback="read_only")
          >>> kb.read_only, kb.warnings[-1]
          (True, 'knowledge base empty and read-only for this run: nothing learned is kept')
        """
        check_choice("KnowledgeBase.open", "fallback", fallback, ("raise", "read_only"))
        try:
            return cls(url)
        except KnowledgeBaseError as error:
            if fallback == "raise":
                raise
            first = str(error)
        try:
            base = cls(url, read_only=True)
            base.warnings = (first, "knowledge base opened read-only: nothing learned in this run is kept")
        except KnowledgeBaseError as error:
            base = cls("sqlite://")
            base.read_only = True
            notes = (first,) if str(error) == first else (first, str(error))
            base.warnings = (*notes, "knowledge base empty and read-only for this run: nothing learned is kept")
        return base

    def close(self) -> None:
        """Close the base's connections."""
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"KnowledgeBase({self.url!r}{', read_only=True' if self.read_only else ''})"

    @contextlib.contextmanager
    def _writing(self, doing: str):
        if self.read_only:
            raise KnowledgeBaseError(f"KnowledgeBase: cannot {doing} {self.url}: it is open read-only")
        try:
            with self._schema.writer(self._engine) as connection:
                yield connection
        except _database_errors() as error:
            raise open_error(self._raw_url, doing, error) from None

    @contextlib.contextmanager
    def _reading(self):
        try:
            with self._engine.connect() as connection:
                yield connection
        except _database_errors() as error:
            raise open_error(self._raw_url, "read knowledge base", error) from None

    def add(self, record: Record) -> str:
        """Store one record (one transaction); returns its id (the record's own, or a new uuid4 hex).

        Raises:
          KnowledgeBaseError: the base is read-only or cannot be written.
        """
        return self.add_many([record])[0]

    def add_many(self, records: Iterable[Record]) -> list[str]:
        """Store records in one transaction (all or none); a record whose id is stored already is left as it is.

        Returns:
          The records' ids, in order.

        Raises:
          KnowledgeBaseError: the base is read-only or cannot be written.
        """
        return self._store(list(records))[0]

    def _store(self, records: list[Record]) -> tuple[list[str], int]:
        for i, record in enumerate(records):
            if not isinstance(record, Record):
                raise ValueError(f"KnowledgeBase.add: records[{i}] must be a Record, got {type(record).__name__}")
        ids = [record.id or uuid.uuid4().hex for record in records]
        rows = [row_of(r, i, knowledge_merge.signature_of(r.signature).key) for r, i in zip(records, ids, strict=True)]
        with self._writing("write to") as connection:
            added = self._schema.insert_new(connection, rows)
        return ids, added

    def _rows(self, **filters) -> list[tuple[dict, Record]]:
        """Stored rows with their records; a row that is not a whole record is left out and said in ``warnings``."""
        with self._reading() as connection:
            rows = self._schema.select(connection, **filters)
        whole = []
        for row in rows:
            try:
                if "problem" in row:
                    raise ValueError(row["problem"])
                whole.append((row, record_of(row)))
            except (ValueError, TypeError) as error:
                note = f"record {row['id']} skipped: {' '.join(str(error).split())[:200]}"
                self.warnings += () if note in self.warnings else (note,)
        return whole

    def records(self, family: str | None = None, signature_key: str | None = None) -> list[Record]:
        """The stored records, oldest first, optionally of one family or one signature key.

        Examples:
          >>> import tempfile
          >>> KnowledgeBase(f"sqlite:///{tempfile.mkdtemp()}/kb.db").records(family="cnn")
          []
        """
        return [record for _, record in self._rows(family=family, signature_key=signature_key)]

    def trust(self, source: str) -> float:
        """The trust in a source, in (0, 1] (:data:`~hamjax.autotune.knowledge_merge.DEFAULT_TRUST` if never judged)."""
        with self._reading() as connection:
            return self._schema.trusts(connection).get(source, knowledge_merge.DEFAULT_TRUST)

    def _similar(self, signature, min_similarity: float) -> list[tuple[float, list[dict]]]:
        """``(similarity, rows)`` per stored signature key at least ``min_similarity`` alike, most similar first."""
        target = knowledge_merge.signature_of(signature)
        by_key: dict[str, list[dict]] = {}
        for row, _ in self._rows():
            by_key.setdefault(row["signature_key"], []).append(row)
        scored = []
        for rows in by_key.values():
            score = knowledge_merge.alike(target, rows[0]["signature"])
            if score is not None and score >= min_similarity:
                scored.append((score, rows))
        scored.sort(key=lambda pair: -pair[0])
        return scored

    def lookup(self, signature, k: int = 5, *, min_similarity: float = 0.0) -> list[tuple[Record, float]]:
        """The records of the ``k`` stored signatures most similar to ``signature``, most similar first.

        Args:
          signature: a :class:`~hamjax.autotune.signature.Signature` or its dict.
          k: how many distinct signatures to keep (all the records of each).
          min_similarity: records of less similar models are left out.

        Returns:
          ``(record, similarity)`` pairs, by similarity, then newest first.

        Raises:
          KnowledgeBaseError: the base cannot be read.
        """
        k = check_int("KnowledgeBase.lookup", "k", k, minimum=1)
        min_similarity = check_number("KnowledgeBase.lookup", "min_similarity", min_similarity, minimum=0.0,
                                      maximum=1.0)  # fmt: skip
        return [
            (record_of(row), score)
            for score, rows in self._similar(signature, min_similarity)[:k]
            for row in sorted(rows, key=lambda r: -r["time"])
        ]

    def suggest(
        self,
        signature,
        constraints: Any = None,
        k: int = 3,
        *,
        min_similarity: float = knowledge_merge.MIN_SIMILARITY,
        half_life_days: float = 180.0,
        now: float | None = None,
    ) -> list[tuple[dict, float, str]]:
        """Recipes the records of similar models recommend, merged robustly (:mod:`~hamjax.autotune.knowledge_merge`).

        Args:
          signature: the model's signature (or its dict).
          constraints: an ``objective.Constraints``-like object (or dict):
            recipes whose merged results meet it rank first; ``None``: the
            records' own verdicts.
          k: how many recipes to return.
          min_similarity: records of less similar models are left out.
          half_life_days: a record's weight halves with each such age.
          now: the time ages are counted to (Unix seconds; default: now).

        Returns:
          Up to ``k`` ``(raw recipe dict, weight in [0, 1], reason)``:
          feasible ones first, then by weight.

        Raises:
          KnowledgeBaseError: the base cannot be read.
        """
        where = "KnowledgeBase.suggest"
        k = check_int(where, "k", k, minimum=1)
        min_similarity = check_number(where, "min_similarity", min_similarity, minimum=0.0, maximum=1.0)
        half_life_days = check_number(where, "half_life_days", half_life_days, minimum=0.0, exclusive_minimum=True)
        now = clock.time() if now is None else check_number(where, "now", now)
        with self._reading() as connection:
            trusts = self._schema.trusts(connection)
        scored = self._similar(signature, min_similarity)
        return knowledge_merge.advise(
            scored, trusts, constraints, k=k, age=lambda t: now - t, half_life_days=half_life_days
        )

    def report(
        self,
        target: str,
        measured: Any,
        baseline: Any = None,
        *,
        signature=None,
        constraints: Any = None,
    ) -> list[tuple[str, str | None]]:
        """Judge stored records by a measured outcome; the sources of records that proved wrong lose trust.

        All verdicts and trust updates are one transaction.

        Args:
          target: a record id, or a recipe key (:func:`recipe_key`): the records of that recipe are
            judged (with ``signature``, those of models at least
            :data:`~hamjax.autotune.knowledge_merge.MIN_SIMILARITY` alike).
          measured: the outcome: a results dict, or an ``objective.Measured`` with ``baseline``.
          baseline: the dense model's ``objective.Measured`` (when ``measured`` is one).
          signature: the measured model's signature: each verdict moves the
            trust in proportion to how similar the record's model is
            (``None``: fully).
          constraints: what feasibility is judged against (``None``: the results' own ``feasible``).

        Returns:
          ``(record id, why it proved wrong or None)`` for each judged record.

        Raises:
          KnowledgeBaseError: read-only, unwritable, or no record has that id or recipe key.
        """
        if isinstance(measured, dict):
            outcome = check_results("KnowledgeBase.report", measured)
        elif baseline is None:
            raise ValueError("KnowledgeBase.report: baseline is needed when measured is not a results dict")
        else:
            outcome = knowledge_merge.measured_results(measured, baseline, constraints)
        target_signature = None if signature is None else knowledge_merge.signature_of(signature)
        with self._writing("write to") as connection:
            by_id = self._schema.select(connection, id=target)
            judged = [
                row for row in by_id or self._schema.select(connection, recipe_key=target) if "problem" not in row
            ]
            if not judged:
                raise KnowledgeBaseError(f"KnowledgeBase.report: no record has id or recipe key {target!r}")
            verdicts = []
            for row in judged:
                alike = (
                    1.0
                    if target_signature is None
                    else (knowledge_merge.alike(target_signature, row["signature"]) or 0.0)
                )
                if not by_id and alike < knowledge_merge.MIN_SIMILARITY:
                    continue  # a record about an unlike model predicted nothing about this one
                why = knowledge_merge.wrong_prediction(row["results"], outcome, constraints)
                self._schema.judge(connection, row["source"], why is not None, alike)
                verdicts.append((row["id"], why))
        return verdicts

    def export_jsonl(self, path: str | os.PathLike) -> int:
        """Write every record as one JSON line (atomically: a temporary file renamed over ``path``).

        Returns:
          How many records were written.

        Raises:
          ValueError: the folder of ``path`` does not exist.
          KnowledgeBaseError: the base cannot be read.
        """
        return export_jsonl(self.records(), path)

    def import_jsonl(self, path: str | os.PathLike) -> ImportReport:
        """Add the records of a JSON-lines file in one transaction; a bad line is skipped and reported, never raised.

        Records keep their ids, so importing a file twice adds nothing the second time.

        Args:
          path: the file (as :meth:`export_jsonl` writes).

        Returns:
          An :class:`~hamjax.autotune.knowledge_io.ImportReport`: ``added``,
          ``present`` (ids stored already), ``skipped`` as ``(line number, reason)``.

        Raises:
          ValueError: the file cannot be read.
          KnowledgeBaseError: the base is read-only or cannot be written.

        Examples:
          >>> import tempfile
          >>> folder = tempfile.mkdtemp()
          >>> _ = open(f"{folder}/in.jsonl", "w").write("{broken\\n")
          >>> KnowledgeBase(f"sqlite:///{folder}/kb.db").import_jsonl(f"{folder}/in.jsonl").skipped[0][0]
          1
        """
        numbered, skipped = read_jsonl(path)
        readable = []
        for number, record in numbered:
            try:
                knowledge_merge.signature_of(record.signature)
            except (ValueError, TypeError, KeyError) as error:
                skipped.append((number, f"signature: {' '.join(str(error).split())[:200]}"))
                continue
            readable.append(record)
        _, added = self._store(readable) if readable else ([], 0)
        skipped.sort()
        return ImportReport(added=added, present=len(readable) - added, skipped=skipped)
