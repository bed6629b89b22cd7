"""Part ``ab`` of bench/serve.py: the sequential A/B test's false-positive rate and power, by simulation.

Every simulated test watches two arms observed in pairs and is checked after
every observation (continuous monitoring) with
:func:`hamjax.serve.sequential.two_proportions`'s statistic (mSPRT, normal
mixture, :data:`~hamjax.serve.sequential.DEFAULT_TAU`), alpha 0.05. The
horizon is the documented sample size
(:func:`~hamjax.serve.sequential.sample_size` for 0.90 vs 0.92 at 80% power):

* A/A: both arms at accuracy 0.90; a test that ever rejects is a false positive;
* A/B: 0.90 vs 0.92; a test that rejects by the horizon has detected it.

All tests run at once in numpy. ``--quick`` runs the two target
simulations (1,000 tests each, under a second each here); the full run adds
A/A tests over a five times longer horizon (at p = 0.90 and p = 0.5) and the
power at the same size when checked every 100 observations, and, for
contrast, the false-positive rate of a fixed-horizon z-test read after
every observation.

Targets (issue 21): A/A false positives <= 5% over 1,000 tests with
continuous checking; power >= 80% for a 2-point difference at the
documented sample size.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from hamjax.serve import sequential

TESTS = 1000
P, DELTA, ALPHA = 0.90, 0.02, 0.05
FALSE_POSITIVE_GOAL, POWER_GOAL = 0.05, 0.80


def _row(name: str, sim: sequential.Simulation, **extra) -> dict:
    row = {"name": name, **dataclasses.asdict(sim), **extra}
    row["seconds"] = round(row["seconds"], 3)
    row["mean_stop"] = None if row["mean_stop"] is None else round(row["mean_stop"], 1)
    return row


def peeking_z_test(n_tests: int, n_per_arm: int, p: float, alpha: float, seed: int, min_n: int = 30) -> dict:
    """The failure the issue names: a fixed-horizon two-proportion z-test read after every observation (A/A).

    Rejects when ``|d| / sqrt(pooled p (1 - p) * 2 / n) >= z_{1 - alpha / 2}`` at any look from ``min_n`` on.
    """
    started = time.perf_counter()
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
    rng = np.random.default_rng(seed)
    rejected = np.zeros(n_tests, bool)
    x_a, x_b = np.zeros(n_tests), np.zeros(n_tests)
    for start in range(0, n_per_arm, 1024):
        width = min(1024, n_per_arm - start)
        c_a = x_a[:, None] + np.cumsum(rng.random((n_tests, width)) < p, axis=1)
        c_b = x_b[:, None] + np.cumsum(rng.random((n_tests, width)) < p, axis=1)
        x_a, x_b = c_a[:, -1], c_b[:, -1]
        n = np.arange(start + 1, start + width + 1, dtype=np.float64)
        pooled = np.clip((c_a + c_b) / (2 * n), 1e-9, 1 - 1e-9)
        stat = np.abs(c_b - c_a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
        rejected |= ((stat >= z) & (n >= min_n)).any(axis=1)
    return {
        "name": "A/A, fixed-horizon z-test read after every observation (what peeking does)",
        "rate": float(rejected.mean()),
        "tests": n_tests,
        "n_per_arm": n_per_arm,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run(quick: bool) -> tuple[list, list]:
    """``(results, targets)``: one row per simulation, the two A/B targets."""
    n = sequential.sample_size(DELTA, P, power=POWER_GOAL, alpha=ALPHA)
    common = {"p": P, "alpha": ALPHA, "tau": sequential.DEFAULT_TAU, "documented_sample_size": n}
    aa = sequential.simulate_aa(TESTS, n, P, ALPHA, seed=0, check_every=1)
    ab = sequential.power(DELTA, n, P, ALPHA, n_tests=TESTS, seed=1, check_every=1)
    results = [_row("A/A, checked after every observation", aa, **common)]
    results.append(_row(f"A/B {P:.2f} vs {P + DELTA:.2f}, checked after every observation", ab, **common))
    if not quick:
        long = sequential.simulate_aa(TESTS, 5 * n, P, ALPHA, seed=2)
        half = sequential.simulate_aa(TESTS, 5 * n, 0.5, ALPHA, seed=3)
        sparse = sequential.power(DELTA, n, P, ALPHA, n_tests=TESTS, seed=4, check_every=100)
        results += [
            _row("A/A, 5x the horizon", long, **common),
            _row("A/A at p = 0.5, 5x the horizon", half, **{**common, "p": 0.5}),
            _row(f"A/B {P:.2f} vs {P + DELTA:.2f}, checked every 100", sparse, **common),
            peeking_z_test(TESTS, n, P, ALPHA, seed=5),
        ]
    targets = [
        {
            "name": f"A/A false positives over {TESTS} tests checked after every observation ({n} per arm)",
            "measured": aa.rate,
            "goal": f"<= {FALSE_POSITIVE_GOAL}",
            "met": aa.rate <= FALSE_POSITIVE_GOAL,
        },
        {
            "name": f"power for {P:.2f} vs {P + DELTA:.2f} at the documented sample size ({n} per arm, {TESTS} tests)",
            "measured": ab.rate,
            "goal": f">= {POWER_GOAL}",
            "met": ab.rate >= POWER_GOAL,
        },
    ]
    return results, targets


def main(argv=None) -> int:
    import argparse

    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two target simulations")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("serve_ab", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
