"""The knowledge base: storage in SQLite and PostgreSQL, lookup, robust suggestions, trust, JSON lines, failures."""

import concurrent.futures
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

from hamjax.autotune import knowledge_merge, objective
from hamjax.autotune.knowledge import KnowledgeBase, KnowledgeBaseError, Record, default_url, recipe_key
from hamjax.autotune.signature import model_signature, similarity

NOW = 1.8e9
QUANT = {"name": "q", "steps": [{"kind": "quantize", "method": "static"}, {"kind": "export", "precisions": "int8"}]}
PRUNE = {"name": "p", "steps": [{"kind": "prune", "sparsity": 0.7}, {"kind": "export", "precisions": "fp32"}]}
BOTH = {"name": "pq", "steps": [{"kind": "prune", "sparsity": 0.5}, {"kind": "quantize"}, {"kind": "export"}]}


def _mlp_signature(width, inputs=16):
    params = {"w1": jnp.ones((inputs, width)), "w2": jnp.ones((width, 4))}
    return model_signature(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], params, jnp.ones((2, inputs)))


@pytest.fixture(scope="module")
def sigs():
    return {"small": _mlp_signature(32), "near": _mlp_signature(40), "far": _mlp_signature(512, inputs=256)}


def _record(sig, recipe=QUANT, *, drop=0.3, reduction=4.0, feasible=True, source="lab", time=NOW, confidence=1.0):
    results = {"accuracy_drop": drop, "size_reduction": reduction, "size_bytes": 1000, "feasible": feasible}
    return Record(sig.to_dict(), sig.family, recipe, results, {"device": "cpu"}, time, source, confidence)


@pytest.fixture
def kb(tmp_path):
    base = KnowledgeBase(f"sqlite:///{tmp_path / 'kb.db'}")
    yield base
    base.close()


def test_records_round_trip_with_ids_and_filters(kb, sigs):
    first = kb.add(_record(sigs["small"]))
    ids = kb.add_many([_record(sigs["near"], PRUNE, time=NOW + 1), _record(sigs["far"], time=NOW + 2)])
    assert len({first, *ids}) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in (first, *ids))
    stored = kb.records()
    assert [r.id for r in stored] == [first, *ids]  # oldest first
    assert stored[0] == dataclasses.replace(_record(sigs["small"]), id=first)
    assert stored[1].recipe == PRUNE and stored[1].results["size_bytes"] == 1000
    assert [r.id for r in kb.records(signature_key=sigs["near"].key)] == [ids[0]]
    assert len(kb.records(family="mlp")) == 3 and kb.records(family="cnn") == []
    assert kb.add(stored[0]) == first and len(kb.records()) == 3  # an id stored already is not added twice


def test_sqlite_file_runs_in_wal_mode(kb, tmp_path):
    kb.add(_record(_mlp_signature(8)))
    with sqlite3.connect(tmp_path / "kb.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_no_url_means_the_default_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HAMJAX_DATA_DIR", str(tmp_path / "data"))
    kb = KnowledgeBase()
    assert kb.url == default_url() and repr(kb) == f"KnowledgeBase({default_url()!r})"
    kb.close()
    assert (tmp_path / "data" / "knowledge.db").is_file()


def test_lookup_orders_by_similarity(kb, sigs):
    kb.add_many([_record(sigs["far"]), _record(sigs["near"]), _record(sigs["small"], time=NOW - 5),
                 _record(sigs["small"], PRUNE)])  # fmt: skip
    found = kb.lookup(sigs["small"], k=2)
    assert [r.signature["key"] for r, _ in found] == [sigs["small"].key] * 2 + [sigs["near"].key]
    assert [r.recipe for r, _ in found[:2]] == [PRUNE, QUANT]  # newest first within one signature
    assert found[0][1] == 1.0 and found[2][1] == pytest.approx(similarity(sigs["small"], sigs["near"]))
    assert kb.lookup(sigs["small"].to_dict(), k=5, min_similarity=0.99) == found[:2]


def test_suggest_takes_the_median_across_sources_and_discounts_an_outlier(kb, sigs):
    good = [_record(sigs["small"], drop=d, source=s) for d, s in ((0.2, "a"), (0.4, "b"), (0.3, "c"))]
    liar = _record(sigs["small"], drop=12.0, reduction=40.0, source="d")
    kb.add_many([*good, liar])
    [(recipe, weight, reason)] = kb.suggest(sigs["small"], objective.Constraints(max_accuracy_drop=1.0), now=NOW)
    assert recipe == QUANT
    assert reason.startswith("4 records from 4 sources (mean similarity 1.00, 3 agree): accuracy drop 0.30 points")
    assert reason.endswith("4x smaller; feasible")
    clean = KnowledgeBase("sqlite://")
    clean.add_many(good)
    [(_, clean_weight, _)] = clean.suggest(sigs["small"], now=NOW)
    assert 0.5 < weight < clean_weight < 0.8  # the outlier costs weight; three agreeing sources earn most of it


def test_one_record_alone_gets_limited_weight_and_many_sources_more(sigs):
    one, three = KnowledgeBase("sqlite://"), KnowledgeBase("sqlite://")
    one.add(_record(sigs["small"]))
    three.add_many([_record(sigs["small"], source=s) for s in "abc"])
    [(_, alone, _)] = one.suggest(sigs["small"], now=NOW)
    [(_, agreed, _)] = three.suggest(sigs["small"], now=NOW)
    assert alone == pytest.approx(0.5 * knowledge_merge.DEFAULT_TRUST)
    assert agreed == pytest.approx(0.875 * knowledge_merge.DEFAULT_TRUST)


def test_suggest_ranks_feasible_first_and_weighs_similarity_confidence_and_age(sigs):
    kb = KnowledgeBase("sqlite://")
    kb.add_many([_record(sigs["small"], QUANT, drop=2.5, source=s) for s in "ab"])  # breaks 1 point
    kb.add_many([_record(sigs["near"], PRUNE, drop=0.5, reduction=5.0, source=s) for s in "ab"])
    kb.add_many([_record(sigs["small"], BOTH, drop=0.1, reduction=8.0, source=s, time=NOW - 365 * 86400) for s in "ab"])
    kb.add(_record(sigs["far"], QUANT, drop=0.0))  # too unlike: left out
    limits = objective.Constraints(max_accuracy_drop=1.0, min_size_reduction=4.0)
    suggested = kb.suggest(sigs["small"], limits, k=5, now=NOW)
    assert [r for r, _, _ in suggested] == [PRUNE, BOTH, QUANT]
    weights = [w for _, w, _ in suggested]
    assert weights[0] == pytest.approx(0.75 * 0.8 * similarity(sigs["small"], sigs["near"]))
    assert weights[1] == pytest.approx(0.75 * 0.8 * 0.5 ** (365 / 180))
    assert weights[2] == pytest.approx(0.75 * 0.8 * knowledge_merge.INFEASIBLE)
    assert "infeasible: accuracy_drop 2.5 > 1" in suggested[2][2]
    dict_limits = {"max_accuracy_drop": 3.0, "min_size_reduction": 4.0}
    assert kb.suggest(sigs["small"], dict_limits, k=1, now=NOW)[0][0] == QUANT  # now feasible, most similar
    assert kb.suggest(sigs["small"], {"max_latency_ms": 5.0}, k=1, now=NOW)[0][2].endswith(
        "latency_ms unknown (limit 5)"
    )
    assert KnowledgeBase("sqlite://").suggest(sigs["small"]) == []


def test_report_lowers_the_trust_of_a_wrong_source_and_raises_a_right_one(kb, sigs):
    wrong_id = kb.add(_record(sigs["small"], drop=0.2, source="optimist"))
    kb.add(_record(sigs["small"], PRUNE, drop=3.0, feasible=False, source="careful"))
    kb.add(_record(sigs["far"], PRUNE, drop=0.1, source="elsewhere"))  # about an unlike model: not judged below
    verdicts = kb.report(wrong_id, {"accuracy_drop": 4.0, "feasible": False})
    assert verdicts == [(wrong_id, "predicted feasible, measured infeasible (infeasible when measured)")]
    assert kb.trust("optimist") == pytest.approx(0.4)
    base = objective.Measured(accuracy=0.95, latency_ms=2.0, size_bytes=4000, params=100)
    measured = objective.Measured(accuracy=0.925, latency_ms=1.0, size_bytes=1000, params=25)
    limits = objective.Constraints(max_accuracy_drop=1.0)
    [(_, why)] = kb.report(recipe_key(PRUNE), measured, base, signature=sigs["near"], constraints=limits)
    assert why is None
    assert kb.trust("elsewhere") == knowledge_merge.DEFAULT_TRUST
    assert kb.trust("careful") == pytest.approx(0.8 + similarity(sigs["small"], sigs["near"]) * 0.2 / 20)
    [(_, why)] = kb.report(wrong_id, {"accuracy_drop": 1.5, "feasible": True})
    assert why == "accuracy drop predicted 0.20 points, measured 1.50"
    assert kb.trust("optimist") == pytest.approx(0.2)
    assert kb.trust("never-judged") == knowledge_merge.DEFAULT_TRUST
    with pytest.raises(KnowledgeBaseError, match="no record has id or recipe key 'nothing'"):
        kb.report("nothing", {"accuracy_drop": 0.0, "feasible": True})


def test_export_and_import_json_lines(kb, sigs, tmp_path):
    kb.add_many([_record(sigs["small"]), _record(sigs["near"], PRUNE, source="b")])
    path = tmp_path / "kb.jsonl"
    assert kb.export_jsonl(path) == 2
    assert sorted(os.listdir(tmp_path)) == ["kb.db", "kb.db-shm", "kb.db-wal", "kb.jsonl"]  # no temporary left
    other = KnowledgeBase(f"sqlite:///{tmp_path / 'other.db'}")
    assert other.import_jsonl(path) == (2, 0, [])
    assert other.import_jsonl(path) == (0, 2, [])  # the same file twice adds nothing twice
    assert sorted(r.id for r in other.records()) == sorted(r.id for r in kb.records())
    lines = path.read_text().splitlines()
    good = json.loads(lines[0])
    nan = json.dumps({**good, "id": None, "results": {**good["results"], "accuracy_drop": "NaN"}})
    path.write_text("\n".join([
        "{not json",
        json.dumps({k: v for k, v in good.items() if k != "recipe"}),
        json.dumps({**good, "time": "yesterday", "id": None}),
        nan.replace('"NaN"', "NaN"),
        json.dumps({**good, "id": None, "confidence": 0.5}),
        "",
        json.dumps({**good, "id": None, "signature": {"family": "mlp"}}),
        lines[1],
    ]) + "\n")  # fmt: skip
    report = other.import_jsonl(path)
    assert (report.added, report.present) == (1, 1)
    assert [n for n, _ in report.skipped] == [1, 2, 3, 4, 7]
    reasons = dict(report.skipped)
    assert reasons[1].startswith("not valid JSON") and "missing fields ['recipe']" in reasons[2]
    assert "Record: time must be a finite number >= 0, got 'yesterday'" in reasons[3]
    assert "NaN is not a number" in reasons[4] and reasons[7].startswith("signature:")
    assert other.import_jsonl(path).added == 0  # an id-less line gets the same id from its content


def test_newer_schema_version_is_refused_naming_both(tmp_path):
    path = tmp_path / "kb.db"
    KnowledgeBase(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE hamjax_knowledge_schema SET version = 7")
    with pytest.raises(KnowledgeBaseError, match="written by schema version 7; this hamjax reads version 1 at most"):
        KnowledgeBase(f"sqlite:///{path}")
    fallback = KnowledgeBase.open(f"sqlite:///{path}", fallback="read_only")
    assert fallback.read_only and fallback.records() == [] and "schema version 7" in fallback.warnings[0]


def test_corrupt_file_raises_or_falls_back_to_an_empty_read_only_base(tmp_path, sigs):
    path = tmp_path / "kb.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(
        KnowledgeBaseError, match=f"cannot open knowledge base sqlite:///{path}: file is not a database"
    ):
        KnowledgeBase(f"sqlite:///{path}")
    kb = KnowledgeBase.open(f"sqlite:///{path}", fallback="read_only")
    assert kb.read_only and kb.suggest(sigs["small"]) == []
    assert kb.warnings[-1] == "knowledge base empty and read-only for this run: nothing learned is kept"
    with pytest.raises(KnowledgeBaseError, match="it is open read-only"):
        kb.add(_record(sigs["small"]))


def test_read_only_base_reads_but_never_writes(tmp_path, sigs):
    url = f"sqlite:///{tmp_path / 'kb.db'}"
    KnowledgeBase(url).add(_record(sigs["small"]))
    os.chmod(tmp_path / "kb.db", 0o444)
    reader = KnowledgeBase(url, read_only=True)
    assert len(reader.records()) == 1 and reader.read_only and reader.warnings == ()
    with pytest.raises(KnowledgeBaseError, match="open read-only"):
        reader.report(reader.records()[0].id, {"accuracy_drop": 0.0, "feasible": True})
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(KnowledgeBaseError, match="empty.db: it holds no knowledge base"):
        KnowledgeBase(f"sqlite:///{tmp_path / 'empty.db'}", read_only=True)
    with pytest.raises(KnowledgeBaseError, match="missing.db: unable to open database file"):
        KnowledgeBase(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)


def test_unreachable_postgresql_hides_the_password_and_falls_back():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://kb:s3cret@127.0.0.1:{port}/kb"
    with pytest.raises(
        KnowledgeBaseError, match=rf"cannot open knowledge base postgresql://kb:\*\*\*@127.0.0.1:{port}"
    ) as info:
        KnowledgeBase(url)
    assert "s3cret" not in str(info.value)
    kb = KnowledgeBase.open(url, fallback="read_only")
    assert kb.read_only and kb.records() == [] and not any("s3cret" in w for w in kb.warnings)


_WORKER = textwrap.dedent("""
    import json, sys
    from hamjax.autotune.knowledge import KnowledgeBase, Record
    url, worker, n, signature = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    kb = KnowledgeBase(url)
    recipe = {"steps": [{"kind": "prune", "sparsity": 0.5}, {"kind": "export"}]}
    for i in range(n):
        results = {"accuracy_drop": 0.01 * i, "feasible": True}
        print(kb.add(Record(signature, "mlp", recipe, results, {"worker": worker}, 1.8e9 + i, f"w{worker}")))
""")


def _write_in_processes(url, signature, n):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-c", _WORKER, url]
    procs = [
        subprocess.Popen(
            [*argv, str(w), str(n), json.dumps(signature.to_dict())], stdout=subprocess.PIPE, env=env, text=True
        )
        for w in range(4)
    ]
    written = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        written.extend(out.split())
    return written


def _write_in_threads(url, signature, n):
    """Four writers in threads, each with its own engine and connections: SQLite locks them as it locks processes."""
    recipe = {"steps": [{"kind": "prune", "sparsity": 0.5}, {"kind": "export"}]}

    def write(worker):
        kb = KnowledgeBase(url)
        made = [Record(signature.to_dict(), "mlp", recipe, {"accuracy_drop": 0.01 * i, "feasible": True},
                       {"worker": worker}, 1.8e9 + i, f"w{worker}") for i in range(n)]  # fmt: skip
        ids = [kb.add(record) for record in made]
        kb.close()
        return ids

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [i for ids in pool.map(write, range(4)) for i in ids]


def _check_written(url, written, n):
    stored = KnowledgeBase(url).records()
    assert len(written) == 4 * n and sorted(r.id for r in stored) == sorted(written)  # none lost, none twice
    want = sorted((f"w{w}", w) for w in range(4) for _ in range(n))
    assert sorted((r.source, r.environment["worker"]) for r in stored) == want


def test_four_writers_share_one_sqlite_file(tmp_path, sigs):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _check_written(url, _write_in_threads(url, sigs["small"], 25), 25)


def test_four_writers_share_one_postgresql_database(postgresql_url, sigs):
    _check_written(postgresql_url, _write_in_threads(postgresql_url, sigs["small"], 10), 10)
    kb = KnowledgeBase(postgresql_url.replace("postgresql://", "postgresql+psycopg://"))
    assert kb.suggest(sigs["small"], now=1.8e9)[0][2].startswith("40 records from 4 sources")
    first = kb.records()[0]
    [(judged, why)] = kb.report(first.id, {"accuracy_drop": 5.0, "feasible": False})
    assert judged == first.id and why.startswith("predicted feasible, measured infeasible")
    assert kb.trust(first.source) == pytest.approx(0.4)
    assert kb.add(first) == first.id and len(kb.records()) == 40


@pytest.mark.slow
def test_four_processes_write_one_sqlite_file(tmp_path, sigs):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _check_written(url, _write_in_processes(url, sigs["small"], 25), 25)


@pytest.mark.slow
def test_four_processes_write_one_postgresql_database(postgresql_url, sigs):
    _check_written(postgresql_url, _write_in_processes(postgresql_url, sigs["small"], 25), 25)


def test_a_damaged_row_is_skipped_and_said_never_raised(kb, sigs, tmp_path):
    kept = kb.add(_record(sigs["small"]))
    damaged = [kb.add(_record(sigs["small"], PRUNE, source=s)) for s in "ab"]
    with sqlite3.connect(tmp_path / "kb.db") as conn:
        conn.execute("UPDATE hamjax_knowledge_records SET results = ? WHERE id = ?", ("{not json", damaged[0]))
        conn.execute(
            "UPDATE hamjax_knowledge_records SET results = ? WHERE id = ?", ('{"accuracy_drop": NaN}', damaged[1])
        )
    assert [r.id for r in kb.records()] == [kept]
    assert [recipe for recipe, _, _ in kb.suggest(sigs["small"], now=NOW)] == [QUANT]
    assert sorted(kb.warnings) == sorted([
        f"record {damaged[0]} skipped: results is not valid JSON",
        f"record {damaged[1]} skipped: Record: results must have 'feasible', got keys ['accuracy_drop']",
    ])  # fmt: skip


def test_corrupted_records_with_low_confidence_do_not_turn_the_advice(sigs):
    """30% of the records are corrupted (wrong results, low confidence): the recipe that works still ranks first."""
    kb = KnowledgeBase("sqlite://")
    truth = [_record(sigs["small"], QUANT, drop=0.3 + 0.05 * i, source="abc"[i % 3]) for i in range(7)]
    lies = [_record(sigs["small"], PRUNE, drop=0.0, reduction=50.0, source="x", confidence=0.2),
            _record(sigs["small"], QUANT, drop=9.0, feasible=False, source="x", confidence=0.2),
            _record(sigs["small"], PRUNE, drop=0.1, reduction=30.0, source="y", confidence=0.2)]  # fmt: skip
    kb.add_many([*truth, *lies])
    limits = objective.Constraints(max_accuracy_drop=1.0, min_size_reduction=4.0)
    [(first, weight, reason), (second, other, _)] = kb.suggest(sigs["small"], limits, now=NOW)
    assert first == QUANT and "8 records from 4 sources" in reason and "accuracy drop 0.4" in reason
    assert second == PRUNE and other < weight / 4
