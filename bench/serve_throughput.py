"""Part ``throughput`` of bench/serve.py: the highest request rate each server sustains at p99 <= 50 ms.

For each model (the default MLP and CNN of bench/serve_models.py), the
naive endpoint (bench/serve_naive.py) and ``hamjax serve`` (``--max-batch
32 --max-wait-ms 2``) each run in a subprocess while bench/serve_load.py
offers Poisson arrivals of single-image JSON requests at a stepped rate
(bench/serve_harness.sustainable: x1.5 until a step fails, then
bisection). A step passes with no errors (a request unanswered after 2 s is
one) and a p99 latency, counted from each request's scheduled send time,
of at most 50 ms. The naive server steps up from 50 requests/s, ``hamjax
serve`` from the naive server's result.

Steps: ``--quick`` 2 s each, one bisection; full 5 s, two bisections, and
the two servers measured twice in the order naive, hamjax, hamjax, naive
(the median of the two is the figure; the machine is shared).

Target (issue 21), one per model: ``hamjax serve``'s sustainable rate >= 3x
the naive endpoint's.
"""

from __future__ import annotations

import functools
import os

import serve_harness as h
import serve_models

GOAL = 3.0


def _measure(kind: str, model: str, start: float, quick: bool) -> dict:
    server = h.Server.naive(model) if kind == "naive" else h.Server.hamjax(model)
    with server:
        ready_s = server.wait_ready()
        best, steps = h.sustainable(server, start=start, step_s=2.0 if quick else 5.0, refine=1 if quick else 2)
    return {"server": kind, "sustainable_rps": round(best, 1), "ready_s": round(ready_s, 2), "steps": steps}


@functools.cache
def rates(name: str, quick: bool) -> tuple[dict, ...]:
    """The rows of model ``name``: one per server and round (cached: part ``errors`` needs the naive rate)."""
    model = serve_models.exported(name)["path"]
    rows = []
    order = ("naive", "hamjax") if quick else ("naive", "hamjax", "hamjax", "naive")
    for i, kind in enumerate(order):
        naive = [r["sustainable_rps"] for r in rows if r["server"] == "naive"]
        start = max(50.0, naive[0]) if kind == "hamjax" and naive else 50.0
        rows.append({"model": name, "round": i // 2, **_measure(kind, model, start, quick)})
        rows[-1]["load_average"] = os.getloadavg()[0]
    return tuple(rows)


def figure(name: str, quick: bool, kind: str) -> float:
    """The median sustainable rate of ``kind`` for model ``name`` over its rounds."""
    return h.median([r["sustainable_rps"] for r in rates(name, quick) if r["server"] == kind])


def run(quick: bool):
    results, targets = [], []
    for name in serve_models.MODELS:
        results.extend(rates(name, quick))
        naive, ours = figure(name, quick, "naive"), figure(name, quick, "hamjax")
        ratio = ours / naive if naive > 0 else float("inf") if ours > 0 else 0.0
        results.append({"model": name, "naive_rps": naive, "hamjax_rps": ours, "ratio": round(ratio, 2)})
        targets.append(
            {
                "name": f"{name}: hamjax serve / naive endpoint requests per second at p99 <= 50 ms",
                "measured": round(ratio, 3),
                "goal": f">= {GOAL}",
                "met": ratio >= GOAL,
            }
        )
    return results, targets


if __name__ == "__main__":
    import sys

    from timing import finish

    sys.exit(finish("serve", *run("--quick" in sys.argv)))
