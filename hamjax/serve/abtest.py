"""A/B tests of served variants: stable traffic split, feedback, and an always-valid sequential test, in SQLite.

:class:`ABTest` keeps its record in one SQLite file (WAL journal, a busy
timeout, one connection guarded by a lock, parameterised SQL only):

* ``meta`` -- the file's format (``hamjax-abtest``) and version;
* ``variants`` -- name, traffic weight, position (0 = the control) and
  whether the current split still serves it;
* ``requests`` -- request id, variant, time, latency (ms) and the served
  predicted classes (JSON);
* ``feedback`` -- request id, time, the true labels (JSON), correct and total.

**Assignment.** A client key is hashed with SHA-256; its first 8 bytes, read
as an integer over ``2**64``, are a number ``u`` in ``[0, 1)`` that picks the
variant whose slice of the cumulative normalised weights holds ``u``. The
same key therefore gets the same variant in every process and after every
restart, as long as the split is the same. Without a key the variant is
drawn at random with the instance's generator (``seed``).

**Reopening with another split.** The variants of the new split take the
new weights and positions (its first variant becomes the control); a
variant no longer in the split is kept as inactive: its requests and
feedback stay in the file and in :meth:`ABTest.report`'s ``variants``, it gets no
traffic, takes no new records, and is left out of the comparisons. Clients
whose slice moved may change variant.

**The test.** Each variant after the control is compared with it by
:func:`hamjax.serve.sequential.two_proportions` on the feedback in arrival
order (accuracy: correct labels over labels), at level ``alpha / (number of
comparisons)`` (Bonferroni), so the family of comparisons keeps ``alpha``
however often the report is read; mean latency is compared by
:func:`~hamjax.serve.sequential.two_means`, for reporting.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from hamjax import _checks
from hamjax.serve import sequential

FORMAT = "hamjax-abtest"
VERSION = 1
_TABLES = ("meta", "variants", "requests", "feedback")
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE variants (name TEXT PRIMARY KEY, weight REAL NOT NULL, position INTEGER NOT NULL, "
    "active INTEGER NOT NULL)",
    "CREATE TABLE requests (id TEXT PRIMARY KEY, variant TEXT NOT NULL, time REAL NOT NULL, "
    "latency_ms REAL NOT NULL, predictions TEXT NOT NULL)",
    "CREATE TABLE feedback (request_id TEXT PRIMARY KEY REFERENCES requests(id), time REAL NOT NULL, "
    "labels TEXT NOT NULL, correct INTEGER NOT NULL, total INTEGER NOT NULL)",
)
MAX_ID = 200


def _classes(where: str, arg: str, values) -> list[int]:
    if not isinstance(values, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: {arg} must be a list of integer classes, got {values!r}")
    return [int(v) for v in values]


def unit_of(key: str) -> float:
    """The client key's point in ``[0, 1)``: the first 8 bytes of its SHA-256, big-endian, over ``2**64``.

    Examples:
      >>> unit_of("client-7") == int(hashlib.sha256(b"client-7").hexdigest()[:16], 16) / 2**64
      True
    """
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


class ABTest:
    """A persistent A/B test between served variants (see the module docstring).

    Args:
      variants: variant name -> traffic weight (>= 0, at least one > 0), in
        order; the first is the control.
      path: the SQLite file (created with its folder if missing).
      ttl_s: seconds after a request during which feedback is accepted.
      alpha: the test's family-wise level.
      metric: what feedback measures; ``"accuracy"`` (the only one).
      seed: seeds the generator used for requests without a client key.
      clock: the time source (seconds), ``time.time`` by default.

    Raises:
      ValueError: bad arguments, or ``path`` is not an SQLite file, is one
        another program wrote, or was written by a newer version.

    Examples:
      >>> import pathlib, tempfile
      >>> ab = ABTest({"a": 1.0, "b": 1.0}, path=pathlib.Path(tempfile.mkdtemp()) / "ab.sqlite", ttl_s=60)
      >>> variant = ab.assign("client-7")
      >>> variant == ab.assign("client-7")
      True
      >>> ab.record("r1", variant, 3.2, [4, 1])
      >>> ab.feedback("r1", [4, 2])["correct"]
      1
      >>> ab.report()["variants"][variant]["accuracy"]
      0.5
    """

    def __init__(
        self,
        variants: dict[str, float],
        *,
        path,
        ttl_s: float = 86_400.0,
        alpha: float = 0.05,
        metric: str = "accuracy",
        seed: int | None = None,
        clock=time.time,
    ):
        where = "ABTest"
        if not isinstance(variants, dict) or not variants:
            raise ValueError(f"{where}: variants must be a non-empty dict of name -> weight, got {variants!r}")
        for name, weight in variants.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}: variant names must be non-empty strings, got {name!r}")
            _checks.check_number(where, f"variants[{name!r}]", weight, minimum=0)
        if not sum(variants.values()) > 0:
            raise ValueError(f"{where}: at least one variant weight must be > 0, got {variants!r}")
        self.variants = {name: float(w) for name, w in variants.items()}
        self.control = next(iter(self.variants))
        self.ttl_s = _checks.check_positive(where, "ttl_s", ttl_s)
        self.alpha = _checks.check_number(where, "alpha", alpha, minimum=0, maximum=1, exclusive_minimum=True)
        self.metric = _checks.check_choice(where, "metric", metric, ("accuracy",))
        self.path = Path(path)
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        total = sum(self.variants.values())
        self._names = list(self.variants)
        self._cumulative = np.cumsum([w / total for w in self.variants.values()])
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise ValueError(f"ABTest: cannot open {self.path} as SQLite: {error}") from None
        try:
            db.execute("PRAGMA busy_timeout = 10000")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            with db:
                if not tables:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("format", FORMAT), ("version", str(VERSION)), ("created", repr(self._clock()))],
                    )
                else:
                    self._check_record(db, tables)
                db.execute("UPDATE variants SET active = 0, weight = 0")
                db.executemany(
                    "INSERT INTO variants (name, weight, position, active) VALUES (?, ?, ?, 1) "
                    "ON CONFLICT(name) DO UPDATE SET weight = excluded.weight, position = excluded.position, "
                    "active = 1",
                    [(name, w, i) for i, (name, w) in enumerate(self.variants.items())],
                )
        except sqlite3.Error as error:
            db.close()
            raise ValueError(f"ABTest: {self.path} is not a usable A/B record: {error}") from None
        except ValueError:
            db.close()
            raise
        return db

    def _check_record(self, db: sqlite3.Connection, tables: set[str]) -> None:
        missing = [t for t in _TABLES if t not in tables]
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall()) if "meta" not in missing else {}
        if missing or meta.get("format") != FORMAT:
            raise ValueError(f"ABTest: {self.path} is an SQLite file but not a hamjax A/B record (format {FORMAT!r})")
        version = meta.get("version", "")
        if not version.isdigit() or int(version) > VERSION:
            raise ValueError(
                f"ABTest: {self.path} was written by a newer or unknown format version {version!r} "
                f"(this hamjax reads up to {VERSION})"
            )

    def close(self) -> None:
        """Close the SQLite connection (the file stays)."""
        with self._lock:
            self._db.close()

    def assign(self, client_key: str | None) -> str:
        """The variant for a request: stable for a client key, random without one.

        Raises:
          ValueError: ``client_key`` is neither a string nor None.
        """
        if client_key is None:
            with self._lock:
                u = float(self._rng.random())
        elif isinstance(client_key, str):
            u = unit_of(client_key)
        else:
            raise ValueError(f"ABTest.assign: client_key must be a string or None, got {client_key!r}")
        index = int(np.searchsorted(self._cumulative, u, side="right"))
        return self._names[min(index, len(self._names) - 1)]

    def record(self, request_id: str, variant: str, latency_ms: float, predictions: list[int]) -> None:
        """Record a served request: its id, variant, latency and predicted classes.

        Raises:
          ValueError: an empty or over-long id, an id recorded before, a variant
            not in the current split, a negative or non-finite latency, or
            predictions that are not a list of ints.
        """
        where = "ABTest.record"
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID:
            raise ValueError(f"{where}: request_id must be a string of 1 to {MAX_ID} characters, got {request_id!r}")
        if variant not in self.variants:
            raise ValueError(f"{where}: variant must be one of {tuple(self.variants)}, got {variant!r}")
        latency_ms = _checks.check_number(where, "latency_ms", latency_ms, minimum=0)
        predictions = _classes(where, "predictions", predictions)
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT INTO requests (id, variant, time, latency_ms, predictions) VALUES (?, ?, ?, ?, ?)",
                    (request_id, variant, float(self._clock()), latency_ms, json.dumps(predictions)),
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"{where}: request_id {request_id!r} was recorded before") from None

    def feedback(self, request_id: str, labels: list[int]) -> dict:
        """Record the true labels of a served request.

        Returns:
          ``{"request_id", "variant", "correct", "total", "accuracy"}`` of this feedback.

        Raises:
          KeyError: no request ``request_id``, or it is older than ``ttl_s``.
          ValueError: labels that are not a list of ints, a count other than
            the request's predictions, or feedback already given for it.
        """
        where = "ABTest.feedback"
        labels = _classes(where, "labels", labels)
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT variant, time, predictions FROM requests WHERE id = ?", (str(request_id),)
            ).fetchone()
            if row is None:
                raise KeyError(f"{where}: unknown request id {request_id!r}")
            variant, served_at, predictions = row[0], row[1], json.loads(row[2])
            now = float(self._clock())
            if now - served_at > self.ttl_s:
                raise KeyError(
                    f"{where}: request {request_id!r} expired ({now - served_at:.0f} s > ttl {self.ttl_s:g} s)"
                )
            if len(labels) != len(predictions):
                raise ValueError(
                    f"{where}: labels must hold {len(predictions)} classes (one per row), got {len(labels)}"
                )
            correct = sum(int(p == t) for p, t in zip(predictions, labels, strict=True))
            try:
                self._db.execute(
                    "INSERT INTO feedback (request_id, time, labels, correct, total) VALUES (?, ?, ?, ?, ?)",
                    (request_id, now, json.dumps(labels), correct, len(labels)),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"{where}: feedback for request {request_id!r} was given before") from None
        total = len(labels)
        return {
            "request_id": request_id,
            "variant": variant,
            "correct": correct,
            "total": total,
            "accuracy": correct / total if total else None,
        }

    def report(self) -> dict:
        """Per-variant counts, accuracy and latency, and the sequential test of each variant against the control.

        Returns:
          A JSON-ready dict: ``control``, ``metric``, ``alpha``, ``variants``
          (name -> ``weight``, ``active``, ``requests``, ``feedback``
          (requests with feedback), ``labels``, ``correct``, ``accuracy``,
          ``latency_ms`` {``p50``, ``p95``}), ``comparisons`` (one per active
          variant after the control: ``control``, ``treatment``, ``decision``
          (``"continue"``, ``"<treatment> better"`` or ``"<control> better"``),
          ``alpha`` (Bonferroni share), ``evidence`` (the
          :class:`~hamjax.serve.sequential.SequentialResult` fields: always-valid
          ``p_value``, the confidence sequence ``low``/``high`` of treatment
          minus control accuracy, ``n_a``/``n_b`` labels), ``latency`` (the same
          for mean latency, for reporting)), and ``p_value``: the smallest
          Bonferroni-adjusted p-value over comparisons (1.0 without any).
        """
        with self._lock:
            variants = self._db.execute(
                "SELECT name, weight, position, active FROM variants ORDER BY position"
            ).fetchall()
            requests = self._db.execute("SELECT variant, latency_ms FROM requests ORDER BY rowid").fetchall()
            feedback = self._db.execute(
                "SELECT r.variant, f.correct, f.total FROM feedback AS f JOIN requests AS r ON r.id = f.request_id "
                "ORDER BY f.rowid"
            ).fetchall()
        req_variant = np.array([r[0] for r in requests], dtype=object)
        latency = np.array([r[1] for r in requests], np.float64)
        fb_variant = np.array([r[0] for r in feedback], dtype=object)
        correct = np.array([r[1] for r in feedback], np.float64)
        total = np.array([r[2] for r in feedback], np.float64)
        out_variants = {}
        for name, weight, _, active in sorted(variants, key=lambda v: (not v[3], v[2], v[0])):
            lat = latency[req_variant == name]
            mine = fb_variant == name
            labels, right = int(total[mine].sum()), int(correct[mine].sum())
            out_variants[name] = {
                "weight": weight,
                "active": bool(active),
                "requests": len(lat),
                "feedback": int(mine.sum()),
                "labels": labels,
                "correct": right,
                "accuracy": right / labels if labels else None,
                "latency_ms": {
                    "p50": float(np.percentile(lat, 50)) if len(lat) else None,
                    "p95": float(np.percentile(lat, 95)) if len(lat) else None,
                },
            }
        treatments = [name for name in self.variants if name != self.control]
        level = self.alpha / max(len(treatments), 1)
        comparisons = []
        for name in treatments:
            pair = (fb_variant == self.control) | (fb_variant == name)
            evidence = sequential.two_proportions(
                (fb_variant[pair] == name).astype(np.int64), correct[pair], total[pair], alpha=level
            )
            timed = (req_variant == self.control) | (req_variant == name)
            latency_test = sequential.two_means(
                (req_variant[timed] == name).astype(np.int64), latency[timed], alpha=level
            )
            decision = {"A better": f"{self.control} better", "B better": f"{name} better"}.get(
                evidence.decision, evidence.decision
            )
            comparisons.append(
                {
                    "control": self.control,
                    "treatment": name,
                    "decision": decision,
                    "alpha": level,
                    "evidence": evidence.to_dict(),
                    "latency": latency_test.to_dict(),
                }
            )
        adjusted = [min(1.0, c["evidence"]["p_value"] * len(treatments)) for c in comparisons]
        return {
            "control": self.control,
            "metric": self.metric,
            "alpha": self.alpha,
            "variants": out_variants,
            "comparisons": comparisons,
            "p_value": min(adjusted, default=1.0),
            "method": "mSPRT, normal mixture (always-valid p-value and confidence sequence; hamjax.serve.sequential)",
        }

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}={v:g}" for k, v in self.variants.items())
        return f"ABTest({weights}; {self.path}; ttl {self.ttl_s:g} s; alpha {self.alpha:g})"
