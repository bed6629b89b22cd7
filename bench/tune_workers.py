"""Part ``workers`` of bench/tune.py: 4 worker processes on one study, one of them SIGKILLed midway.

Runs the slow tests of tests/tune/test_workers.py: 4 processes running
:func:`hamjax.tune.run` (a linear model on digits, batches of 8, the median
pruner) on one journal-file study and 4 on one PostgreSQL study (a throwaway
postgresql-15 cluster on a free localhost port), ``TRIALS`` trials each study
(``--quick``: ``QUICK_TRIALS``). The first worker is SIGKILLed once a quarter
of the trials have finished and it holds running trials; the others fail its
trials (its process is gone) and run them again. Each study is then audited
(:func:`hamjax.tune.workers.audit`).

Targets, per storage: every trial ended COMPLETE, PRUNED or FAIL-then-retried
(each FAIL retried exactly once, with its parameters), none lost (no trial left
RUNNING or WAITING, at least ``TRIALS`` finished), none written twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TRIALS, QUICK_TRIALS = 256, 64
ROOT = Path(__file__).resolve().parent.parent


def run(quick: bool) -> tuple[list, list]:
    trials = QUICK_TRIALS if quick else TRIALS
    env = {**os.environ, "HAMJAX_TUNE_WORKERS_TRIALS": str(trials)}
    argv = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-s", "-m", "slow", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*argv, "tests/tune/test_workers.py"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    audits = {}
    for line in done.stdout.splitlines():
        at = line.find("audit {")
        if at >= 0:
            report = json.loads(line[at + len("audit ") :])
            audits[report["storage"]] = report
    results, targets = [], []
    for storage in ("journal", "postgresql"):
        report = audits.get(storage)
        name = (
            f"4 workers on one {storage} study, one SIGKILLed midway, {trials} trials: every trial finished or retried"
        )
        if report is None:
            tail = " ".join((done.stdout + done.stderr).split())[-300:]
            targets.append({"name": name, "measured": "absent", "goal": "no problem", "met": False, "note": tail})
            continue
        results.append(report)
        clean = (
            not report["problems"]
            and report["running"] == 0
            and report["waiting"] == 0
            and report["failed"] == report["retried"] >= 1
            and report["complete"] + report["pruned"] >= trials
        )
        print(
            f"tune/workers: {storage}: {report['trials']} trials ({report['complete']} complete, {report['pruned']} "
            f"pruned, {report['failed']} failed and retried) in {report['seconds']} s; problems {report['problems']}"
        )
        targets.append(
            {
                "name": name,
                "measured": f"{report['failed']} failed, {report['retried']} retried, {report['running']} running, "
                f"{report['waiting']} waiting, {len(report['problems'])} problems",
                "goal": "every FAIL retried once, none running or waiting, no problem",
                "met": clean,
            }
        )
    return results, targets


def main(argv=None) -> int:
    import argparse

    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TRIALS} trials a study")
    args = parser.parse_args(argv)
    results, goals = run(args.quick)
    return finish("tune_workers", results, goals)


if __name__ == "__main__":
    raise SystemExit(main())
