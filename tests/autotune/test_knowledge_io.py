"""JSON lines: atomic export, line-by-line reading that skips and reports what is not a record."""

import json
import os

import pytest

from hamjax.autotune.knowledge_io import content_id, export_jsonl, read_jsonl
from hamjax.autotune.knowledge_record import Record


def _record(drop=0.1, **kw):
    return Record({"family": "mlp"}, "mlp", {"steps": [{"kind": "export"}]}, {"accuracy_drop": drop, "feasible": True},
                  {}, 1.8e9, "lab", **kw)  # fmt: skip


def test_export_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text("old\n")

    def failing():
        yield _record()
        raise RuntimeError("the base went away")

    with pytest.raises(RuntimeError, match="the base went away"):
        export_jsonl(failing(), path)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["kb.jsonl"]  # the old file whole, no temporary
    assert export_jsonl([_record(), _record(0.2, id="c" * 32)], path) == 2
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [None, "c" * 32]
    with pytest.raises(ValueError, match="export_jsonl: path must be in an existing folder"):
        export_jsonl([], tmp_path / "missing" / "kb.jsonl")


def test_read_skips_and_reports_bad_lines(tmp_path):
    path = tmp_path / "kb.jsonl"
    export_jsonl([_record(), _record(0.2, id="d" * 32)], path)
    good = path.read_text().splitlines()
    path.write_bytes(
        "\n".join([good[0], "   ", good[1], good[1], good[0].replace("1800000000.0", "1e999"), "[]"]).encode()
        + b"\n\xff\xfe garbage\n"
    )
    records, skipped = read_jsonl(path)
    assert [(n, r.id) for n, r in records] == [(1, content_id(_record())), (3, "d" * 32)]
    assert [n for n, _ in skipped] == [4, 5, 6, 7]
    assert skipped[0][1] == f"the id {'d' * 32} of line 3 again"
    assert skipped[1][1] == "Record: time must be a finite number >= 0, got inf"
    assert skipped[2][1] == "Record.from_dict: a record must be a JSON object, got []"
    assert skipped[3][1].startswith("not valid JSON")
    assert content_id(_record()) == content_id(_record()) != content_id(_record(0.3))
    with pytest.raises(ValueError, match="import_jsonl: cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")
