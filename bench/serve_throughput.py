"""Part ``throughput`` of bench/serve.py: the highest request rate each server sustains at p99 <= 50 ms.

For each model (the default MLP and CNN of bench/serve_models.py), the
naive endpoint (bench/serve_naive.py) and ``hamjax serve`` (``--max-batch
32 --max-wait-ms 2``) each run in a subprocess while bench/serve_load.py
offers Poisson arrivals of single-image JSON requests at a stepped rate
(bench/serve_harness.sustainable: from 50 requests/s, x1.5 until a step
fails, halving while none passed, then bisection). A step passes with no
errors (a request unanswered after 2 s is one) and a p99 latency, counted
from each request's scheduled send time, of at most 50 ms. Both servers
run at once and take turns step by step, so the shared machine's changing
load falls on both alike.

After the search, each server also takes 400 requests/s for 3 s (full:
8 s), far past saturation, with a 5 s deadline: the rate of 200 answers
there (``overload``) is what each server completes when swamped, whatever
the latency (a figure, not a target).

Steps: ``--quick`` 3 s each (at least 300 requests), one bisection, one
round; full 8 s (at least 1,000 requests), two bisections, two rounds with
fresh processes (the median of the rounds is the figure).

Target (issue 21), one per model: ``hamjax serve``'s sustainable rate >= 3x
the naive endpoint's.
"""

from __future__ import annotations

import functools
import os

import serve_harness as h
import serve_models

GOAL = 3.0
OVERLOAD_RPS = 400.0


@functools.cache
def rates(name: str, quick: bool) -> tuple[dict, ...]:
    """One row per server and round for model ``name`` (cached: parts ``errors``, ``shutdown`` and ``soak`` use it)."""
    model = serve_models.exported(name)["path"]
    rows = []
    for i in range(1 if quick else 2):
        with h.Server.naive(model) as naive, h.Server.hamjax(model) as ours:
            ready = {"naive": naive.wait_ready(), "hamjax": ours.wait_ready()}
            load_before = os.getloadavg()[0]
            searches = h.sustainable(
                {"naive": naive, "hamjax": ours},
                start=50.0,
                step_s=3.0 if quick else 8.0,
                refine=1 if quick else 2,
                least=300 if quick else 1000,
            )
            overload = {}
            for kind, server in (("naive", naive), ("hamjax", ours)):
                server.settle()
                overload[kind] = h.load(server, OVERLOAD_RPS, int(OVERLOAD_RPS * (3 if quick else 8)), timeout=5.0)
        for kind, search in searches.items():
            rows.append(
                {
                    "model": name,
                    "round": i,
                    "server": kind,
                    "sustainable_rps": round(search.best, 1),
                    "ready_s": round(ready[kind], 2),
                    "load_average": [load_before, os.getloadavg()[0]],
                    "steps": search.steps,
                    "overload": {k: overload[kind][k] for k in ("offered_rps", "outcomes", "latency", "achieved_rps")},
                }
            )
    return tuple(rows)


def figure(name: str, quick: bool, kind: str) -> float:
    """The median sustainable rate of ``kind`` for model ``name`` over its rounds."""
    return h.median([r["sustainable_rps"] for r in rates(name, quick) if r["server"] == kind])


def run(quick: bool):
    results, targets = [], []
    for name in serve_models.MODELS:
        results.append({"model": name, "exported": serve_models.exported(name)})
        results.extend(rates(name, quick))
        naive, ours = figure(name, quick, "naive"), figure(name, quick, "hamjax")
        ratio = ours / naive if naive > 0 else float("inf") if ours > 0 else 0.0
        capacity = {
            f"{kind}_overload_answered_rps": h.median(
                [r["overload"]["achieved_rps"] for r in rates(name, quick) if r["server"] == kind]
            )
            for kind in ("naive", "hamjax")
        }
        results.append({"model": name, "naive_rps": naive, "hamjax_rps": ours, "ratio": round(ratio, 2), **capacity})
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
