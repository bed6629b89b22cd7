"""Part ``soak`` of bench/serve.py: the server's resident memory under steady load.

For each model, ``hamjax serve`` takes Poisson arrivals at half its
sustainable rate from part ``throughput`` (100/s when that part did not
run) for 120 s (``--quick``: 30 s, said in the target's name) while this
process samples the server's RSS (psutil) every 0.5 s. The baseline is the
median RSS of the soak's second tenth (the first requests allocate the
runtime's arenas, the JSON and drift buffers); the growth is the median of
the last tenth over it. The answers' error share and latency are recorded
beside it.

Target (issue 21), per model: RSS growth < 10%.
"""

from __future__ import annotations

import time

import serve_harness as h
import serve_models
import serve_shutdown

GOAL = 0.10


def run(quick: bool):
    seconds = 30.0 if quick else 120.0
    results, targets = [], []
    for name in serve_models.MODELS:
        rate = serve_shutdown.rate_for(name, quick)
        with h.Server.hamjax(serve_models.exported(name)["path"]) as server:
            server.wait_ready()
            ready_rss = h.rss_bytes(server)
            process = h.start_load(server, rate, int(rate * seconds), timeout=10.0)
            started, samples = time.perf_counter(), []
            while process.poll() is None:
                samples.append((time.perf_counter() - started, h.rss_bytes(server)))
                time.sleep(0.5)
            summary = h.finish_load(process, 60)
        early = [rss for t, rss in samples if 0.1 * seconds <= t < 0.2 * seconds]
        late = [rss for t, rss in samples if t >= 0.9 * seconds]
        baseline, final = h.median(early), h.median(late)
        growth = final / baseline - 1
        results.append(
            {
                "model": name,
                "offered_rps": rate,
                "seconds": seconds,
                "rss_ready_mb": round(ready_rss / 2**20, 1),
                "rss_baseline_mb": round(baseline / 2**20, 1),
                "rss_final_mb": round(final / 2**20, 1),
                "rss_max_mb": round(max(rss for _, rss in samples) / 2**20, 1),
                "growth": round(growth, 4),
                **{k: summary[k] for k in ("requests", "outcomes", "errors", "latency", "achieved_rps")},
            }
        )
        targets.append(
            {
                "name": f"{name}: hamjax serve RSS growth over a {seconds:.0f} s soak at {rate:.0f}/s"
                + (" (--quick; the issue's soak is 2 minutes)" if quick else ""),
                "measured": round(growth, 4),
                "goal": f"< {GOAL}",
                "met": growth < GOAL,
            }
        )
    return results, targets


if __name__ == "__main__":
    import sys

    from timing import finish

    sys.exit(finish("serve", *run("--quick" in sys.argv)))
