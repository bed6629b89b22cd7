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
power at the same size when checked every 100 observations.

Targets (issue 21): A/A false positives <= 5% over 1,000 tests with
continuous checking; power >= 80% for a 2-point difference at the
documented sample size.
"""

from __future__ import annotations

import dataclasses

from hamjax.serve import sequential

TESTS = 1000
P, DELTA, ALPHA = 0.90, 0.02, 0.05
FALSE_POSITIVE_GOAL, POWER_GOAL = 0.05, 0.80


def _row(name: str, sim: sequential.Simulation, **extra) -> dict:
    row = {"name": name, **dataclasses.asdict(sim), **extra}
    row["seconds"] = round(row["seconds"], 3)
    row["mean_stop"] = None if row["mean_stop"] is None else round(row["mean_stop"], 1)
    return row


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
