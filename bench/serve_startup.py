"""Part ``startup`` of bench/serve.py: no compile or session warm-up left after ``/readyz`` answers 200.

For each model and server, a fresh process is started; one HTTP client
(one kept-alive connection) polls ``/readyz`` every 20 ms and, at the first
200, sends its first prediction request at once, then 200 more, one after
another. A start's figure is the first request's latency over the median
of the 200; the target's, the median over starts (``--quick``: 3 starts
per model, full: 5; one latency per start is at the mercy of the shared
machine, so one start decides nothing). The next five latencies are kept
too. The naive endpoint's rows are context (it warms nothing).

Target (issue 21), per model: ``hamjax serve``'s first request within 2x
the median.
"""

from __future__ import annotations

import time

import httpx
import serve_harness as h
import serve_models

GOAL = 2.0


def first_and_rest(server: h.Server, body: bytes, n: int = 200) -> dict:
    """Start-to-ready seconds, the first request's ms, the median of ``n`` more, their ratio."""
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=30.0) as client:
        ready_s = server.wait_ready(client=client)
        times = []
        for _ in range(n + 1):
            started = time.perf_counter()
            response = client.post(server.url + "/v1/predict", content=body, headers=headers)
            times.append((time.perf_counter() - started) * 1e3)
            if response.status_code != 200:
                raise RuntimeError(f"{server.kind}: status {response.status_code}: {response.text[:200]}")
    median = h.median(times[1:])
    return {
        "ready_s": round(ready_s, 2),
        "first_ms": round(times[0], 3),
        "next_ms": [round(t, 2) for t in times[1:6]],
        "median_ms": round(median, 3),
        "ratio": round(times[0] / median, 3),
    }


def run(quick: bool):
    body = h.bodies_file().read_bytes().splitlines()[0]
    results, targets = [], []
    for name in serve_models.MODELS:
        model = serve_models.exported(name)["path"]
        ratios = []
        for start in range(3 if quick else 5):
            for kind in ("naive", "hamjax"):
                with h.Server.naive(model) if kind == "naive" else h.Server.hamjax(model) as server:
                    row = first_and_rest(server, body)
                results.append({"model": name, "server": kind, "start": start, **row})
                if kind == "hamjax":
                    ratios.append(row["ratio"])
        middle = h.median(ratios)
        targets.append(
            {
                "name": f"{name}: hamjax serve first request after /readyz over the median of the next 200 "
                f"(median over {len(ratios)} starts; each start in the results)",
                "measured": round(middle, 3),
                "goal": f"<= {GOAL}",
                "met": middle <= GOAL,
            }
        )
    return results, targets


if __name__ == "__main__":
    import sys

    from timing import finish

    sys.exit(finish("serve", *run("--quick" in sys.argv)))
