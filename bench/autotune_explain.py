"""Part ``explain`` of bench/autotune.py: the layer-sensitivity ranking against per-layer ablation.

For each reference MLP and CNN of bench/autotune_models.py (trained once
per process on the bundled digits) and each method (``"quantize"`` at 8, 4
and 2 bits per output channel; ``"prune"`` to 50, 75 and 90% sparsity, the
defaults of :data:`hamjax.autotune.sensitivity.DEFAULT_LEVELS`), on the
validation split (180 images):

* :func:`hamjax.autotune.layer_sensitivity`: every (layer, level) member in
  one jitted, vmapped call;
* :func:`hamjax.autotune.layer_ablation`: the reference, a Python loop that
  builds each modified model through the storage path (integer codes and
  back, or pruning in numpy) and measures it alone.

A layer's score is its mean accuracy drop over the levels (what both
functions rank by); the agreement is the Spearman rank correlation of the
two score vectors (average ranks for ties; :func:`scipy.stats.spearmanr`
when scipy is installed, else :func:`spearman` here, the same formula).
When either vector is constant the correlation is undefined and the target
says so (not met).

Each function is called twice in a row and both wall times are given. The
loop's jitted ``apply_fn`` is compiled once per process, so its second call
(and the ``prune`` rows, after ``quantize``) are warm; ``layer_sensitivity``
jits a new closure at every call, so each of its calls compiles again and
its second call is not faster than its first.

Models: ``--quick``: mlp-s and cnn-s; full: mlp-s, mlp-l, cnn-s and cnn-l.

Target (issue 20), one per (model, method): Spearman >= 0.8.
"""

from __future__ import annotations

import time

import numpy as np

from hamjax.autotune import layer_ablation, layer_sensitivity

FULL = ("mlp-s", "mlp-l", "cnn-s", "cnn-l")
QUICK = ("mlp-s", "cnn-s")
METHODS = ("quantize", "prune")
SPEARMAN_GOAL = 0.8


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v``, ties sharing the mean of their ranks."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), np.float64)
    ranks[order] = np.arange(1, len(v) + 1, dtype=np.float64)
    for value in np.unique(v):
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length vectors (average ranks for ties; NaN if either is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")


def rank_correlation(a, b) -> tuple[float, str]:
    """``(rho, how)``: scipy's Spearman when installed, else :func:`spearman`; NaN when undefined."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), "undefined (a constant score vector)"
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return spearman(a, b), "bench/autotune_explain.spearman"
    return float(spearmanr(a, b).statistic), "scipy.stats.spearmanr"


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def compare(apply_fn, params, x, y, method: str) -> dict:
    """One (model, method) row: both functions called twice, their drops and the rank correlation of their scores."""
    fast, fast_first = _timed(layer_sensitivity, apply_fn, params, x, y, method=method)
    _, fast_second = _timed(layer_sensitivity, apply_fn, params, x, y, method=method)
    slow, slow_first = _timed(layer_ablation, apply_fn, params, x, y, method=method)
    _, slow_second = _timed(layer_ablation, apply_fn, params, x, y, method=method)
    rho, how = rank_correlation(fast.drops.mean(axis=1), slow.drops.mean(axis=1))
    return {
        "method": method,
        "levels": list(fast.levels),
        "layers": list(fast.names),
        "baseline_val_accuracy": fast.baseline,
        "sensitivity_drops": np.round(fast.drops, 4).tolist(),
        "ablation_drops": np.round(slow.drops, 4).tolist(),
        "max_abs_drop_difference": float(np.max(np.abs(fast.drops - slow.drops))),
        "sensitivity_ranking": list(fast.ranking),
        "ablation_ranking": list(slow.ranking),
        "spearman": None if np.isnan(rho) else round(rho, 4),
        "spearman_by": how,
        "members": int(fast.drops.size),
        "vmapped_seconds_first": round(fast_first, 3),
        "vmapped_seconds_second": round(fast_second, 3),
        "loop_seconds_first": round(slow_first, 3),
        "loop_seconds_second": round(slow_second, 4),
        "loop_over_vmapped_second": round(slow_second / fast_second, 3),
    }


def run(quick: bool) -> tuple[list, list]:
    """``(results, targets)``: a row per (model, method) and its Spearman target."""
    import autotune_models

    ds = autotune_models.dataset()
    x, y = np.asarray(ds.val.x), np.asarray(ds.val.y)
    results, targets = [], []
    for name in QUICK if quick else FULL:
        apply_fn, params, _, train_seconds = autotune_models.trained(name)
        for method in METHODS:
            row = {"model": name, "train_seconds": round(train_seconds, 1), **compare(apply_fn, params, x, y, method)}
            results.append(row)
            rho = row["spearman"]
            target = {
                "name": f"Spearman of layer_sensitivity vs layer_ablation scores, {name}, {method}",
                "measured": "undefined" if rho is None else rho,
                "goal": f">= {SPEARMAN_GOAL}",
                "met": rho is not None and rho >= SPEARMAN_GOAL,
            }
            if rho is None:
                target["note"] = row["spearman_by"]
            targets.append(target)
    return results, targets


def main(argv=None) -> int:
    import argparse

    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"models {', '.join(QUICK)} (full: {', '.join(FULL)})")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("autotune_explain", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
