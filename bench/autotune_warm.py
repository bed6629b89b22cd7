"""Part ``warm`` of bench/autotune.py: autotune with a knowledge base of the other models, clean and corrupted.

Runs after part ``cold`` in one process (it reuses its runs; alone, it runs
them first). For each model, leave-one-out: a fresh SQLite knowledge base
holds the full evaluations of every cold run (all three strategies) of the
*other* models, as records (signature, family, recipe, measured results,
environment, source ``MODEL/STRATEGY``). Then:

* ``warm``: :func:`hamjax.autotune.optimize_auto` with that base, the hybrid
  strategy and a budget of ``WARM_BUDGET`` full evaluations (the base's
  suggestions come first, screened like any candidate);
* ``corrupted``: the same with 30% of the records corrupted (chosen with a
  seeded generator): their results are made wrong (an infeasible record
  claims 0.1 points lost and a 10x size reduction, a feasible one claims 5
  points lost) and their confidence set to 0.2; the budget is the cold
  runs' (``BUDGET``), so it compares with the cold hybrid run at equal budget.

The runs of one model share the cold runs' memo of measurements, so a
recipe measured before scores the same (``part cold`` explains the memo).

Targets: ``warm`` feasible within ``WARM_BUDGET`` full evaluations on >= 7 of
8 models (``--quick``: all but one); ``corrupted`` never worse than the cold
hybrid run (feasible wherever cold was, and the same chosen recipe or a chosen
score at least cold's: one recipe chosen by both runs scores differently only by
the latency each run measured).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from autotune_cold import BUDGET, CONSTRAINTS, QUICK_BUDGET, cold_runs, summary_of
from autotune_models import dataset, trained
from timing import finish

from hamjax import measure
from hamjax.autotune import KnowledgeBase, Record, optimize_auto, recipe_key
from hamjax.autotune.loop import results_of

WARM_BUDGET = 2
CORRUPTED = 0.3


def records_of(name: str, entry: dict) -> list[Record]:
    """Knowledge-base records of every full evaluation of a model's cold runs."""
    env = measure.environment()
    sig = entry["signature"]
    out = []
    for strategy, (_, result) in entry["runs"].items():
        for e in result.history:
            if e.fidelity != "full" or any(str(v).startswith("failed") for v in e.violations):
                continue
            results = results_of(e.measured, result.baseline, _constraints(), score=e.score, violations=e.violations)
            out.append(
                Record(sig.to_dict(), sig.family, e.recipe.to_dict(), results, env, time.time(), f"{name}/{strategy}")
            )
    return out


def _constraints():
    from hamjax.autotune import Constraints

    return Constraints(**CONSTRAINTS)


def corrupt(records: list[Record], rng: np.random.Generator) -> tuple[list[Record], int]:
    """``records`` with ``CORRUPTED`` of them given wrong results and confidence 0.2; how many were changed."""
    chosen = set(rng.choice(len(records), size=round(CORRUPTED * len(records)), replace=False).tolist())
    out = []
    for i, record in enumerate(records):
        if i in chosen:
            wrong = dict(record.results)
            if record.results["feasible"]:
                wrong.update(accuracy_drop=5.0, feasible=False, score=-3.0)
            else:
                wrong.update(accuracy_drop=0.1, size_reduction=10.0, feasible=True, score=1.5)
            record = dataclasses.replace(record, results=wrong, confidence=0.2, source=f"{record.source}/corrupted")
        out.append(record)
    return out, len(chosen)


def run(quick: bool) -> tuple[list, list]:
    runs = cold_runs(quick)
    budget = QUICK_BUDGET if quick else BUDGET
    ds = dataset()
    folder = Path(tempfile.mkdtemp(prefix="hamjax-bench-kb-"))
    rng = np.random.default_rng(0)
    results = []
    warm_ok, robust_ok = 0, 0
    for name, entry in runs.items():
        apply_fn, params, config, _ = trained(name)
        others = [r for other, e in runs.items() if other != name for r in records_of(other, e)]
        clean = KnowledgeBase(f"sqlite:///{folder / f'{name}-clean.db'}")
        clean.add_many(others)
        bad_records, changed = corrupt(others, rng)
        bad = KnowledgeBase(f"sqlite:///{folder / f'{name}-corrupted.db'}")
        bad.add_many(bad_records)
        common = {
            "constraints": CONSTRAINTS,
            "strategy": "hybrid",
            "config": config,
            "memo": entry["memo"],
            "learn": False,
        }
        started = time.perf_counter()
        warm = optimize_auto(apply_fn, params, ds, knowledge=clean, budget=WARM_BUDGET, **common)
        warm_row = {**summary_of(warm), "seconds": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        robust = optimize_auto(apply_fn, params, ds, knowledge=bad, budget=budget, **common)
        robust_row = {**summary_of(robust), "seconds": round(time.perf_counter() - started, 1)}
        cold, cold_result = entry["runs"]["hybrid"]
        warm_ok += warm_row["first_feasible_full"] is not None and warm_row["first_feasible_full"] <= WARM_BUDGET
        # the same chosen recipe is the same result (its scores differ only by the latency measured in each run)
        same = (
            robust.recipe is not None
            and cold_result.recipe is not None
            and (recipe_key(robust.recipe.to_dict()) == recipe_key(cold_result.recipe.to_dict()))
        )
        robust_row["same_recipe_as_cold"] = same
        not_worse = (
            cold["score"] is None
            or same
            or (robust_row["score"] is not None and robust_row["score"] >= cold["score"] - 1e-9)
        )
        robust_ok += not_worse
        for arm, row, kb_records in (("warm", warm_row, len(others)), ("corrupted", robust_row, len(bad_records))):
            results.append(
                {
                    "model": name,
                    "arm": arm,
                    "records": kb_records,
                    "suggested": (warm if arm == "warm" else robust).knowledge["suggested"],
                    **row,
                }
            )
        results[-1]["corrupted_records"] = changed
        results[-1]["cold_score"] = cold["score"]
        print(f"autotune/warm: {name}: warm {warm_row}; corrupted {robust_row}; cold {cold['score']}", flush=True)
    n = len(runs)
    targets = [
        {
            "name": f"warm start (leave-one-out knowledge base): feasible within {WARM_BUDGET} full evaluations",
            "measured": f"{warm_ok} of {n} models",
            "goal": f">= {n - 1} of {n}",
            "met": warm_ok >= n - 1,
        },
        {
            "name": f"{int(CORRUPTED * 100)}% of records corrupted: warm result never worse than cold (budget {budget})",
            "measured": f"not worse on {robust_ok} of {n} models",
            "goal": f"{n} of {n}",
            "met": robust_ok == n,
        },
    ]
    return results, targets


def main(argv=None) -> int:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    return finish("autotune_warm", *run(quick))


if __name__ == "__main__":
    sys.exit(main())
