"""Part ``writers`` of bench/autotune.py: 4 processes writing one knowledge base at once, then an audit.

For each backend (a SQLite file; a throwaway postgresql-15 cluster on a free
localhost port, started here as tests/postgres_server.py starts its own), 4
processes (this file run with ``--worker``) open one
:class:`hamjax.autotune.KnowledgeBase`, wait until all four have it open
(starting a process that imports hamjax takes seconds; without the wait the
first could be done before the last began), and each adds ``RECORDS`` records
(``--quick``: ``QUICK_RECORDS``), one transaction each. A record is what a run
would store: the signature dict of an untrained reference MLP or CNN for the
8x8 digits (:func:`hamjax.autotune.model_signature`), a prune / quantize /
export recipe, measured results, the environment (worker and sequence number)
and one of two sources shared by all workers. After every ``REPORT_EVERY``
records a worker also calls ``suggest`` (reading every row) and ``report`` on
one of its own records, which moves that record's source's trust in a write
transaction: records of ``lab-right`` are confirmed (trust rises), records
of ``lab-wrong`` are measured infeasible (trust halves), so 4 processes race
on the same two trust rows.

The audit reads the base afresh: records found (and rows in the table),
duplicates (ids, or one worker's sequence number stored twice), records lost
(an id a worker was given back but the base lacks), records no worker
reported, stored content that differs from what was written, each worker's
sequence 0..N-1 complete, and per source the judged counts and trust equal to
the workers' verdicts replayed through
:func:`hamjax.autotune.knowledge_merge.updated_trust` (each source is judged
one way only, so the order of the verdicts does not change the result).

Target (issue 20), one per backend: 4N records found, 0 duplicates, 0 lost,
trust rows consistent. Where PostgreSQL cannot start, its target is not met
and says why. Results: seconds (processes started to all ended), write
seconds (first write to last, over all workers), writes per second over
them, and the seconds during which all four were writing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RECORDS, QUICK_RECORDS = 250, 50
WORKERS = 4
REPORT_EVERY = 10
SOURCES = ("lab-right", "lab-wrong")
MODELS = ("mlp", "cnn")
LIMITS = {"max_accuracy_drop": 1.0, "min_size_reduction": 2.0}
TIMEOUT_S = 900


def signatures() -> list[dict]:
    """The signature dicts of the untrained reference MLP and CNN for 8x8x1 digits (what the records describe)."""
    import jax.numpy as jnp

    import hamjax
    from hamjax import models
    from hamjax.autotune import model_signature

    out = []
    for name in MODELS:
        apply_fn, params = hamjax.functional(models.build(name, seed=0, input_shape=(8, 8, 1), num_classes=10))
        out.append(model_signature(apply_fn, params, jnp.zeros((2, 8, 8, 1), jnp.float32)).to_dict())
    return out


def content(worker: int, seq: int, sigs: list[dict]) -> dict:
    """The fields of worker ``worker``'s record number ``seq`` (all but its time), the same in every process."""
    sig = sigs[(worker + seq) % len(sigs)]
    sparsity = (0.3, 0.5, 0.7, 0.9)[seq % 4]
    bits = 8 if seq % 3 else 4
    recipe = {
        "name": f"w{worker}-{seq}",
        "steps": [
            {"kind": "prune", "sparsity": sparsity, "method": "magnitude"},
            {"kind": "quantize", "method": "static", "bits": bits},
            {"kind": "export", "precisions": "int8"},
        ],
    }
    drop = round(0.05 * seq % 3.0, 4)
    reduction = round(4.0 / (1.0 - sparsity) if bits == 8 else 8.0 / (1.0 - sparsity), 4)
    feasible = drop <= LIMITS["max_accuracy_drop"]
    results = {
        "accuracy_drop": drop,
        "latency_ms": round(0.2 + 0.01 * seq, 4),
        "size_bytes": int(sig["params"] * 4 / reduction) + 1,
        "size_reduction": reduction,
        "speedup": round(1.0 + sparsity, 4),
        "feasible": feasible,
        "score": round(0.69 * (1.0 + sparsity) - drop, 4),
        "constraints": LIMITS,
    }
    environment = {"worker": worker, "seq": seq, "device": "cpu", "backend": "bench"}
    return {
        "signature": sig,
        "family": sig["family"],
        "recipe": recipe,
        "results": results,
        "environment": environment,
        "source": SOURCES[seq % 2],
        "confidence": 0.9,
    }


def work(url: str, worker: int, n: int, sigs: list[dict], barrier: str) -> None:
    """One writer: ``n`` records, and a ``suggest`` and a ``report`` after every ``REPORT_EVERY``; JSON lines out.

    Once its base is open it says so (a file ``ready-WORKER`` in ``barrier``)
    and waits for the file ``go`` there, so that the writers start together.
    """
    from hamjax.autotune.knowledge import KnowledgeBase, Record

    kb = KnowledgeBase(url)
    Path(barrier, f"ready-{worker}").touch()
    deadline = time.time() + TIMEOUT_S
    while not Path(barrier, "go").exists():
        if time.time() > deadline:
            raise RuntimeError(f"worker {worker}: no go signal within {TIMEOUT_S} s")
        time.sleep(0.01)
    print(json.dumps({"start": time.time()}), flush=True)
    ids = []
    for seq in range(n):
        fields = content(worker, seq, sigs)
        ids.append(kb.add(Record(time=time.time(), **fields)))
        print(json.dumps({"id": ids[-1], "seq": seq}), flush=True)
        if (seq + 1) % REPORT_EVERY == 0:
            suggested = kb.suggest(fields["signature"], LIMITS, k=3)
            judged = seq - 1 - (seq // REPORT_EVERY) % 2  # alternately a lab-right and a lab-wrong record
            judged_fields = content(worker, judged, sigs)
            measured = dict(judged_fields["results"])
            if judged_fields["source"] == "lab-wrong":
                measured.update(accuracy_drop=measured["accuracy_drop"] + 5.0, feasible=False)
            verdicts = kb.report(ids[judged], measured)
            print(json.dumps({"suggested": len(suggested), "verdicts": [[i, why is not None] for i, why in verdicts],
                              "source": judged_fields["source"]}), flush=True)  # fmt: skip
    print(json.dumps({"end": time.time()}), flush=True)
    kb.close()


class Cluster:
    """A throwaway postgresql-15 cluster on 127.0.0.1, trusting local connections (as tests/postgres_server.py)."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("no initdb: the postgresql-15 package is not installed")
        self.bindir = os.path.dirname(found[-1])
        self.root = tempfile.mkdtemp(prefix="hamjax-pg-")
        self.data = os.path.join(self.root, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self.prefix, os.path.join(self.bindir, argv[0]), *argv[1:]], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {' '.join((done.stderr or done.stdout).split())[-300:]}"
            )

    def start(self) -> str:
        """Start the server; its URL."""
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=60"
        log = os.path.join(self.root, "log")
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", log, "-w", "-t", "60", "start")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def write_in_processes(url: str, n: int, sigs_path: str, barrier: str) -> dict:
    """Run ``WORKERS`` writer processes, released together once all are ready; what each printed, its exit status."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    os.makedirs(barrier)
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", url, "", str(n), sigs_path, barrier]
    started = time.perf_counter()
    procs = []
    for w in range(WORKERS):
        argv[4] = str(w)
        procs.append(subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True))
    while time.perf_counter() - started < TIMEOUT_S and any(p.poll() is None for p in procs):
        if all(Path(barrier, f"ready-{w}").exists() for w in range(WORKERS)):
            break
        time.sleep(0.05)
    Path(barrier, "go").touch()  # a worker that failed to open the base has exited; the others go on
    workers = []
    for w, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=max(1.0, TIMEOUT_S - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        workers.append({"worker": w, "returncode": proc.returncode, "lines": lines,
                        "stderr": " ".join(err.split())[-300:]})  # fmt: skip
    return {"workers": workers, "seconds": time.perf_counter() - started}


def fields_of(record) -> dict:
    """A stored record's fields as :func:`content` gives them (all but its id and time)."""
    names = ("signature", "family", "recipe", "results", "environment", "source", "confidence")
    return {name: getattr(record, name) for name in names}


def stored_sources(url: str) -> tuple[dict, int]:
    """``({source: (trust, correct, wrong)}, rows in the records table)``, read straight from the tables."""
    from sqlalchemy import select

    from hamjax.autotune.knowledge_schema import Schema, engine_for

    engine, schema = engine_for(url, read_only=True), Schema()
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(schema.sources)).mappings().all()
            stored = connection.execute(select(schema.table.c.id)).scalars().all()
    finally:
        engine.dispose()
    return {r["source"]: (float(r["trust"]), int(r["correct"]), int(r["wrong"])) for r in rows}, len(stored)


def audit(url: str, run: dict, n: int, sigs: list[dict]) -> dict:
    """Compare the base with what the workers were told was written (see the module docstring)."""
    from hamjax.autotune.knowledge import KnowledgeBase
    from hamjax.autotune.knowledge_merge import DEFAULT_TRUST, updated_trust

    written, verdicts, starts, ends, suggests, problems = {}, [], [], [], 0, []
    for w in run["workers"]:
        if w["returncode"] != 0:
            problems.append(f"worker {w['worker']} exited {w['returncode']}: {w['stderr']}")
        for line in w["lines"]:
            if "id" in line:
                written[line["id"]] = (w["worker"], line["seq"])
            starts += [line["start"]] if "start" in line else []
            ends += [line["end"]] if "end" in line else []
            if "verdicts" in line:
                suggests += 1
                verdicts += [(line["source"], wrong) for _, wrong in line["verdicts"]]
    kb = KnowledgeBase(url, read_only=True)
    records = kb.records()
    problems += list(kb.warnings)
    kb.close()
    sources, rows = stored_sources(url)
    ids = [r.id for r in records]
    tags = Counter((r.environment.get("worker"), r.environment.get("seq")) for r in records)
    found = {r.id: r for r in records}
    lost = sorted(set(written) - set(found))
    unreported = sorted(set(found) - set(written))
    changed = [i for i, (w, seq) in written.items() if i in found and fields_of(found[i]) != content(w, seq, sigs)]
    incomplete = [w for w in range(WORKERS) if sorted(s for (ww, s) in tags if ww == w) != list(range(n))]
    trust_problems = []
    for source in SOURCES:
        wrong = sum(1 for s, bad in verdicts if s == source and bad)
        right = sum(1 for s, bad in verdicts if s == source and not bad)
        expected = DEFAULT_TRUST
        for _ in range(wrong + right):
            expected = updated_trust(expected, wrong > 0)
        trust, correct, wrongs = sources.get(source, (DEFAULT_TRUST, 0, 0))
        if (correct, wrongs) != (right, wrong) or abs(trust - expected) > 1e-9 or (right and wrong):
            trust_problems.append(
                f"{source}: stored trust {trust:.6g} ({correct} right, {wrongs} wrong), verdicts {right} right, "
                f"{wrong} wrong (trust {expected:.6g})"
            )
    write_s = max(ends) - min(starts) if len(ends) == WORKERS and starts else None
    overlap_s = min(ends) - max(starts) if len(ends) == WORKERS and starts else None
    return {
        "written": len(written),
        "found": len(records),
        "rows": rows,
        "duplicate_ids": len(ids) - len(set(ids)),
        "duplicate_records": sum(c - 1 for c in tags.values() if c > 1),
        "lost": len(lost),
        "unreported": len(unreported),
        "changed": len(changed),
        "incomplete_workers": incomplete,
        "suggests": suggests,
        "reports": len(verdicts),
        "trust": {s: sources.get(s) for s in SOURCES},
        "trust_problems": trust_problems,
        "write_seconds": None if write_s is None else round(write_s, 2),
        "writes_per_s": None if not write_s else round(len(written) / write_s, 1),
        "all_writing_seconds": None if overlap_s is None else round(overlap_s, 2),
        "problems": problems + [f"lost id {i}" for i in lost[:5]],
    }


def _target(backend: str, n: int) -> str:
    return (
        f"{WORKERS} processes writing one {backend} knowledge base, {n} records each with suggest/report: "
        "no record lost"
    )


def _goal(n: int) -> str:
    return f"{WORKERS * n} found, 0 duplicates, 0 lost, trust rows consistent"


def run(quick: bool) -> tuple[list, list]:
    n = QUICK_RECORDS if quick else RECORDS
    sigs = signatures()
    folder = tempfile.mkdtemp(prefix="hamjax-kb-writers-")
    sigs_path = os.path.join(folder, "signatures.json")
    Path(sigs_path).write_text(json.dumps(sigs))
    results, targets = [], []
    try:
        for backend in ("sqlite", "postgresql"):
            cluster, url = None, f"sqlite:///{folder}/knowledge.db"
            try:
                if backend == "postgresql":
                    try:
                        cluster = Cluster()
                        url = cluster.start()
                    except Exception as error:  # any failure to start is the target's note
                        reason = f"PostgreSQL server could not start: {' '.join(str(error).split())[:300]}"
                        print(f"autotune/writers: {reason}")
                        targets.append({"name": _target(backend, n), "measured": "absent",
                                        "goal": _goal(n), "met": False,
                                        "note": reason})  # fmt: skip
                        continue
                done = write_in_processes(url, n, sigs_path, os.path.join(folder, f"barrier-{backend}"))
                report = {"backend": backend, "workers": WORKERS, "records_per_worker": n,
                          "seconds": round(done["seconds"], 2), **audit(url, done, n, sigs)}  # fmt: skip
            finally:
                if cluster is not None:
                    cluster.stop()
            results.append(report)
            clean = (
                report["written"] == report["found"] == report["rows"] == WORKERS * n
                and report["duplicate_ids"] == report["duplicate_records"] == report["lost"] == 0
                and report["unreported"] == report["changed"] == 0
                and not report["incomplete_workers"]
                and not report["trust_problems"]
                and not report["problems"]
            )
            print(
                f"autotune/writers: {backend}: {report['found']}/{WORKERS * n} found in {report['seconds']} s "
                f"({report['writes_per_s']} writes/s), {report['suggests']} suggests, {report['reports']} reports, "
                f"trust {report['trust']}; problems {report['problems'] + report['trust_problems']}"
            )
            targets.append(
                {
                    "name": _target(backend, n),
                    "measured": f"{report['found']}/{WORKERS * n} found, "
                    f"{report['duplicate_ids'] + report['duplicate_records']} "
                    f"duplicates, {report['lost']} lost, {report['changed']} changed, "
                    f"{len(report['trust_problems'])} trust rows inconsistent",
                    "goal": _goal(n),
                    "met": clean,
                }
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results, targets


def main(argv=None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        url, worker, n, sigs_path, barrier = argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5]
        work(url, worker, n, json.loads(Path(sigs_path).read_text()), barrier)
        return 0
    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS} records a process")
    args = parser.parse_args(argv)
    results, goals = run(args.quick)
    return finish("autotune_writers", results, goals)


if __name__ == "__main__":
    raise SystemExit(main())
