"""Part ``errors`` of bench/serve.py: ``hamjax serve`` at twice the naive endpoint's saturation rate.

For each model, ``hamjax serve`` (``--max-batch 32 --max-wait-ms 2``, a
fresh process) takes Poisson arrivals at twice the naive endpoint's
sustainable rate from part ``throughput`` (measured there, or here when
this part runs alone), for 20,000 requests (``--quick``: 4,000, said in the
target's name); a request unanswered after 10 s counts as an error, and so
does any status but 200. Afterwards ``/metrics``' ``hamjax_batch_size``
histogram gives the largest batch the server ran (the smallest bucket bound
holding every batch) and the rows it batched.

Targets (issue 21), per model: 0% errors; no batch over ``--max-batch``.
"""

from __future__ import annotations

import serve_harness as h
import serve_models
import serve_throughput


def run(quick: bool):
    count = 4_000 if quick else 20_000
    results, targets = [], []
    for name in serve_models.MODELS:
        naive = serve_throughput.figure(name, quick, "naive")
        rate = 2 * max(naive, 25.0)
        with h.Server.hamjax(serve_models.exported(name)["path"]) as server:
            server.wait_ready()
            summary = h.load(server, rate, count, timeout=10.0)
            buckets = h.histogram(h.metrics_text(server), "hamjax_batch_size")
            rows = float(
                next(
                    line.rsplit(" ", 1)[1]
                    for line in h.metrics_text(server).splitlines()
                    if line.startswith("hamjax_batch_size_sum")
                )
            )
        batches = buckets.get(float("inf"), 0.0)
        largest = min((le for le, n in buckets.items() if n == batches), default=float("nan"))
        error_share = summary["errors"] / summary["requests"]
        results.append(
            {
                "model": name,
                "naive_rps": naive,
                "offered_rps": rate,
                **{k: summary[k] for k in ("requests", "outcomes", "latency", "send_lag", "achieved_rps")},
                "batches": batches,
                "rows_batched": rows,
                "mean_batch": round(rows / batches, 2) if batches else None,
                "batch_histogram": {str(k): v for k, v in buckets.items()},
            }
        )
        label = f"{count:,} requests" + (" (--quick; the issue's figure is 20,000)" if quick else "")
        targets.append(
            {
                "name": f"{name}: error share at 2x the naive saturation rate ({rate:.0f}/s), {label}",
                "measured": error_share,
                "goal": "== 0",
                "met": error_share == 0,
            }
        )
        targets.append(
            {
                "name": f"{name}: largest batch run (batch-size histogram bucket), --max-batch {h.MAX_BATCH}",
                "measured": largest,
                "goal": f"<= {h.MAX_BATCH}",
                "met": batches > 0 and largest <= h.MAX_BATCH,
            }
        )
    return results, targets


if __name__ == "__main__":
    import sys

    from timing import finish

    sys.exit(finish("serve", *run("--quick" in sys.argv)))
