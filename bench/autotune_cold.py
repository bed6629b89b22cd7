"""Part ``cold`` of bench/autotune.py: autotune from nothing, the hybrid strategy against random and Optuna TPE.

Each model of bench/autotune_models.py (trained once) is autotuned under
one constraint set, the issue's: at most 1.0 point of validation accuracy
lost, and a size target 4x below dense (``min_size_reduction=4``: the int
storage of the deployed weights, int8 kernels with their float scales,
biases and norms, against the dense fp32 weights; the ONNX file's bytes,
graph included, are reported beside it as ``file_reduction``). Three strategies run with the same budget of full evaluations
(``BUDGET``; ``--quick``: ``QUICK_BUDGET``) and their default screenings
(cheap evaluations: finetunes capped at one epoch, no export): ``hybrid``
(rules, then PUCT tree search with the rules as priors), ``random`` and
``optuna`` (TPE over the same recipe space). No knowledge base: a cold start.

The three runs of one model share a memo of measurements (a recipe measured
by one strategy is not measured again by another: same model, data and
seed give the same accuracy and size; the latency is the first
measurement's), so equal recipes score equally across strategies; every
proposal still counts against its own strategy's budget. Every run's full
evaluations are kept as knowledge-base records (source ``MODEL/STRATEGY``)
for part ``warm``.

Targets: the hybrid run finds a feasible recipe within ``BUDGET`` full
evaluations on >= 7 of 8 models (``--quick``: all but one of its models);
the hybrid run's score (:func:`hamjax.autotune.objective.score` of its chosen
recipe, equal weights; none feasible = no score) beats both random's and
TPE's on >= 6 of 8 (``--quick``: on more than half).
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time

from autotune_models import MODELS, QUICK, dataset, trained
from timing import finish

from hamjax import compilation
from hamjax.autotune import optimize_auto

CONSTRAINTS = {"max_accuracy_drop": 1.0, "min_size_reduction": 4.0}
STRATEGIES = ("hybrid", "random", "optuna")
BUDGET, QUICK_BUDGET = 8, 4


def summary_of(result) -> dict:
    """What a run found: feasibility, the full evaluation that first met the constraints, the chosen score."""
    full = [e for e in result.history if e.fidelity == "full"]
    first = next((i + 1 for i, e in enumerate(full) if not e.violations), None)
    chosen = None if result.recipe is None else max(e.score for e in full if not e.violations)
    measured = result.measured
    return {
        "feasible": result.feasible,
        "first_feasible_full": first,
        "full": len(full),
        "screenings": sum(e.fidelity == "cheap" for e in result.history),
        "score": chosen,
        "accuracy_drop": None if measured is None else round((result.baseline.accuracy - measured.accuracy) * 100, 3),
        "size_reduction": None if measured is None else round(result.baseline.size_bytes / measured.size_bytes, 3),
        "file_reduction": None
        if measured is None or not (measured.file_bytes and result.baseline.file_bytes)
        else round(result.baseline.file_bytes / measured.file_bytes, 3),
        "unmet": list(result.unmet),
    }


@functools.cache
def cold_runs(quick: bool) -> dict:
    """``{model: {"runs": {strategy: (summary, AutoResult)}, "memo": dict, "signature": Signature}}``, run once per process."""
    compilation.use_cache(tempfile.mkdtemp(prefix="hamjax-bench-cache-"))
    ds = dataset()
    budget = QUICK_BUDGET if quick else BUDGET
    out = {}
    for name in QUICK if quick else tuple(MODELS):
        apply_fn, params, config, train_s = trained(name)
        memo: dict = {}
        runs = {}
        for strategy in STRATEGIES:
            started = time.perf_counter()
            result = optimize_auto(
                apply_fn,
                params,
                ds,
                constraints=CONSTRAINTS,
                budget=budget,
                strategy=strategy,
                config=config,
                memo=memo,
            )
            row = {**summary_of(result), "seconds": round(time.perf_counter() - started, 1)}
            runs[strategy] = (row, result)
            print(f"autotune/cold: {name} {strategy}: {row}", flush=True)
        out[name] = {"runs": runs, "memo": memo, "signature": runs["hybrid"][1].signature, "train_s": train_s}
    return out


def beats(a, b) -> bool:
    """Score ``a`` beats ``b``: a feasible score above the other's, or feasible where the other is not."""
    return a is not None and (b is None or a > b + 1e-9)


def run(quick: bool) -> tuple[list, list]:
    runs = cold_runs(quick)
    budget = QUICK_BUDGET if quick else BUDGET
    results = []
    for name, entry in runs.items():
        for strategy, (row, _) in entry["runs"].items():
            results.append({"model": name, "strategy": strategy, "budget": budget, **row})
    n = len(runs)
    found = sum(
        1
        for entry in runs.values()
        if entry["runs"]["hybrid"][0]["first_feasible_full"] is not None
        and entry["runs"]["hybrid"][0]["first_feasible_full"] <= budget
    )
    wins = {
        other: sum(beats(e["runs"]["hybrid"][0]["score"], e["runs"][other][0]["score"]) for e in runs.values())
        for other in ("random", "optuna")
    }
    need_found = n - 1
    need_wins = 6 if n == 8 else n // 2 + 1
    targets = [
        {
            "name": f"cold start: hybrid finds a feasible recipe within {budget} full evaluations",
            "measured": f"{found} of {n} models",
            "goal": f">= {need_found} of {n}",
            "met": found >= need_found,
        }
    ]
    for other, won in wins.items():
        targets.append(
            {
                "name": f"cold start, equal budget ({budget} full evaluations): hybrid's score beats {other}'s",
                "measured": f"{won} of {n} models",
                "goal": f">= {need_wins} of {n}",
                "met": won >= need_wins,
            }
        )
    return results, targets


def main(argv=None) -> int:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    return finish("autotune_cold", *run(quick))


if __name__ == "__main__":
    sys.exit(main())
