"""Knowledge-base records as JSON lines: one record per line, written atomically, read line by line.

A file from another machine may hold anything: each line is checked on its
own (:func:`~hamjax.autotune.knowledge_record.parse_line`), and a line that is
not a whole, valid record (bad JSON, a missing field, a wrong type, a NaN
result) is skipped and reported with its number, never raised. A line without
an id gets one derived from its content, so importing the same file twice
adds nothing the second time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from hamjax.autotune.knowledge_record import Record, parse_line


class ImportReport(NamedTuple):
    """What an import did: records added, records whose id was stored already, and lines skipped with why."""

    added: int
    present: int
    skipped: list[tuple[int, str]]


def export_jsonl(records: Iterable[Record], path: str | os.PathLike) -> int:
    """Write records as JSON lines: to a temporary file in the same folder, synced, then renamed over ``path``.

    Args:
      records: the records.
      path: the file (its folder must exist).

    Returns:
      How many records were written.

    Raises:
      ValueError: the folder does not exist.

    Examples:
      >>> import tempfile, os
      >>> r = Record({}, "mlp", {"steps": [{"kind": "export"}]}, {"accuracy_drop": 0.0, "feasible": True}, {}, 0.0, "a")
      >>> path = os.path.join(tempfile.mkdtemp(), "kb.jsonl")
      >>> export_jsonl([r], path), len(open(path).read().splitlines())
      (1, 1)
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"export_jsonl: path must be in an existing folder, got {str(path)!r}")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record.to_dict(), sort_keys=True, allow_nan=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count


def content_id(record: Record) -> str:
    """A 32-hex id derived from a record's content (for lines that carry no id)."""
    text = json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_jsonl(path: str | os.PathLike) -> tuple[list[tuple[int, Record]], list[tuple[int, str]]]:
    """The records of a JSON-lines file and the lines skipped; blank lines are neither.

    Args:
      path: the file.

    Returns:
      ``([(line number, record)], [(line number, reason)])``, lines counted from 1;
      every record has an id (its own or :func:`content_id`), each id once.

    Raises:
      ValueError: the file cannot be read.

    Examples:
      >>> import tempfile, os
      >>> path = os.path.join(tempfile.mkdtemp(), "kb.jsonl")
      >>> _ = open(path, "w").write('{"not": "a record"}\\n\\nnot json\\n')
      >>> records, skipped = read_jsonl(path)
      >>> records, [n for n, _ in skipped]
      ([], [1, 3])
    """
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as error:
        raise ValueError(f"import_jsonl: cannot read {str(path)!r}: {error.strerror or error}") from None
    records: list[tuple[int, Record]] = []
    skipped: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = parse_line(line)
        except (ValueError, TypeError, RecursionError) as error:
            skipped.append((number, " ".join(str(error).split())[:300]))
            continue
        if record.id is None:
            record = dataclasses.replace(record, id=content_id(record))
        if record.id in seen:
            skipped.append((number, f"the id {record.id} of line {seen[record.id]} again"))
            continue
        seen[record.id] = number
        records.append((number, record))
    return records, skipped
