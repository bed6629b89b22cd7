"""ABTest: stable assignment, records and feedback in SQLite, the sequential report, persistence, bad files."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from hamjax.serve.abtest import ABTest, unit_of


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


def _filled(path, n=4000, seed=0, clock=None):
    """An A/B test where variant b is right 95% of the time and a 85%, one label per request."""
    ab = ABTest({"a": 1.0, "b": 1.0}, path=path, ttl_s=3600, seed=seed, clock=clock or Clock())
    rng = np.random.default_rng(seed)
    for i in range(n):
        variant = ab.assign(f"client-{i}")
        ab.record(f"r{i}", variant, float(rng.gamma(2.0, 2.0)), [1])
        right = rng.random() < (0.95 if variant == "b" else 0.85)
        ab.feedback(f"r{i}", [1 if right else 0])
    return ab


def test_assignment_is_the_documented_hash_and_follows_the_weights(tmp_path):
    ab = ABTest({"a": 1.0, "b": 3.0}, path=tmp_path / "ab.sqlite")
    keys = [f"user-{i}" for i in range(4000)]
    chosen = [ab.assign(k) for k in keys]
    assert chosen == [("a" if unit_of(k) < 0.25 else "b") for k in keys]
    assert 0.22 < chosen.count("a") / len(keys) < 0.28
    again = ABTest({"a": 1.0, "b": 3.0}, path=tmp_path / "ab.sqlite")
    assert [again.assign(k) for k in keys[:200]] == chosen[:200]
    random_share = [ab.assign(None) for _ in range(2000)].count("a") / 2000
    assert 0.2 < random_share < 0.3
    assert ABTest({"a": 0.0, "b": 1.0}, path=tmp_path / "z.sqlite").assign("x") == "b"


def test_report_counts_accuracy_latency_and_decides(tmp_path):
    ab = _filled(tmp_path / "ab.sqlite")
    report = ab.report()
    a, b = report["variants"]["a"], report["variants"]["b"]
    assert a["requests"] + b["requests"] == 4000 and a["feedback"] == a["requests"] == a["labels"]
    assert 0.8 < a["accuracy"] < 0.9 < b["accuracy"] < 0.98
    assert 0 < a["latency_ms"]["p50"] < a["latency_ms"]["p95"]
    (comparison,) = report["comparisons"]
    evidence = comparison["evidence"]
    assert comparison["control"] == "a" and comparison["treatment"] == "b"
    assert comparison["decision"] == "b better" and evidence["p_value"] <= 0.05
    assert 0 < evidence["low"] < b["accuracy"] - a["accuracy"] < evidence["high"]
    assert evidence["n_a"] == a["labels"] and report["p_value"] == evidence["p_value"]
    assert comparison["latency"]["decision"] == "continue"


def test_the_record_persists_across_restarts(tmp_path):
    path = tmp_path / "ab.sqlite"
    first = _filled(path, n=600).report()
    reopened = ABTest({"a": 1.0, "b": 1.0}, path=path)
    assert reopened.report() == first
    with pytest.raises(ValueError, match="before"):
        reopened.record("r1", "a", 1.0, [1])


def test_a_changed_split_keeps_the_old_records(tmp_path):
    path = tmp_path / "ab.sqlite"
    _filled(path, n=300)
    ab = ABTest({"b": 1.0, "c": 2.0}, path=path)
    report = ab.report()
    assert report["control"] == "b" and not report["variants"]["a"]["active"]
    assert report["variants"]["a"]["requests"] > 0 and report["variants"]["c"]["requests"] == 0
    assert [c["treatment"] for c in report["comparisons"]] == ["c"]
    assert {ab.assign(f"k{i}") for i in range(100)} == {"b", "c"}
    with pytest.raises(ValueError, match="variant"):
        ab.record("new", "a", 1.0, [0])


def test_feedback_refuses_unknown_expired_and_bad_labels(tmp_path):
    clock = Clock()
    ab = ABTest({"a": 1.0, "b": 1.0}, path=tmp_path / "ab.sqlite", ttl_s=60, clock=clock)
    ab.record("r1", "a", 2.0, [3, 4])
    ab.record("r2", "b", 2.0, [3])
    with pytest.raises(KeyError, match="unknown"):
        ab.feedback("nope", [3, 4])
    for labels in ([3], [3, 4, 5], [3, "4"], [3, True], "34", [3.0, 4.0]):
        with pytest.raises(ValueError, match="labels"):
            ab.feedback("r1", labels)
    assert ab.feedback("r1", [3, 5]) == {"request_id": "r1", "variant": "a", "correct": 1, "total": 2, "accuracy": 0.5}
    with pytest.raises(ValueError, match="given before"):
        ab.feedback("r1", [3, 4])
    clock.now += 61
    with pytest.raises(KeyError, match="expired"):
        ab.feedback("r2", [3])
    assert ab.report()["variants"]["a"]["labels"] == 2  # refusals recorded nothing


def test_record_refuses_bad_values(tmp_path):
    ab = ABTest({"a": 1.0, "b": 1.0}, path=tmp_path / "ab.sqlite")
    for args in (("", "a", 1.0, [1]), ("r", "zz", 1.0, [1]), ("r", "a", -1.0, [1]), ("r", "a", 1.0, [1.5])):
        with pytest.raises(ValueError):
            ab.record(*args)
    assert ab.report()["variants"]["a"]["requests"] == 0


def test_concurrent_records_and_feedback_are_all_kept(tmp_path):
    ab = ABTest({"a": 1.0, "b": 1.0}, path=tmp_path / "ab.sqlite")

    def work(t):
        for i in range(50):
            rid = f"t{t}-{i}"
            ab.record(rid, ab.assign(rid), 1.0, [0])
            ab.feedback(rid, [0])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    variants = ab.report()["variants"]
    assert sum(v["feedback"] for v in variants.values()) == 200


def test_a_corrupt_or_unrelated_file_is_refused_at_open(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a usable A/B record"):
        ABTest({"a": 1.0}, path=junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="not a hamjax A/B record"):
        ABTest({"a": 1.0}, path=other)
    newer = tmp_path / "newer.sqlite"
    ABTest({"a": 1.0}, path=newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(ValueError, match="newer"):
        ABTest({"a": 1.0}, path=newer)
    with pytest.raises(ValueError, match="cannot open|not a usable"):
        ABTest({"a": 1.0}, path=tmp_path)
    with pytest.raises(ValueError, match="cannot open"):
        ABTest({"a": 1.0}, path=junk / "under-a-file.sqlite")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variants": {}}, "variants"),
        ({"variants": {"a": -1.0}}, "variants"),
        ({"variants": {"a": 0.0}}, "weight"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"alpha": 1.5}, "alpha"),
        ({"metric": "f1"}, "metric"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    kwargs = {"variants": {"a": 1.0, "b": 1.0}, **kwargs}
    with pytest.raises(ValueError, match=match):
        ABTest(kwargs.pop("variants"), path=tmp_path / "ab.sqlite", **kwargs)
    assert ABTest({"a": 1.0}, path=tmp_path / "ok.sqlite").report()["comparisons"] == []
