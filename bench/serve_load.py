"""The open-loop load generator of bench/serve.py, run as its own process: ``python bench/serve_load.py --url ... --rate R --count N --bodies FILE``.

Requests leave on a fixed schedule (constant gaps of ``1/rate`` or, with
``--poisson``, exponential gaps of mean ``1/rate``) whatever the server does:
a slow answer does not delay the next send, so queueing in the server shows
up in the latencies instead of lowering the offered load (no coordinated
omission). Each latency runs from the request's *scheduled* send time to its
answer, so a client that falls behind its schedule counts against the server
too; the send lag (actual minus scheduled send) is reported beside it.

``FILE`` holds one request body per line (JSON), sent in turn. With
``--sigterm-pid PID --sigterm-at S`` the generator sends SIGTERM to ``PID``
``S`` seconds after the first scheduled send (bench part ``shutdown``).

The last line printed is one JSON object: the offered rate, counts of HTTP
statuses and of failures by kind (``refused``: no connection; ``dropped:
<httpx exception>``: the connection closed before an answer; ``timeout``:
no answer within ``--timeout`` seconds of the send), latency percentiles
of the 200 answers, the send-lag percentiles and the achieved rate. With
``--outcomes`` it also lists every request's ``[scheduled s, latency s,
status or failure kind]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import httpx
import numpy as np


def percentiles(values, qs=(50, 95, 99, 100)) -> dict:
    """``{"p50_ms": ..., ...}`` of seconds ``values`` in milliseconds (empty: None)."""
    if len(values) == 0:
        return {f"p{q}_ms": None for q in qs}
    got = np.percentile(np.asarray(values, np.float64) * 1e3, qs)
    return {f"p{q}_ms": round(float(v), 3) for q, v in zip(qs, got, strict=True)}


async def _one(client, url, body, headers, scheduled, loop, outcomes, i, timeout):
    sent = loop.time()
    try:
        # the deadline covers the whole request: waiting for a pooled connection, sending, the answer
        response = await asyncio.wait_for(client.post(url, content=body, headers=headers), timeout)
        outcome = response.status_code
    except (TimeoutError, httpx.TimeoutException):
        outcome = "timeout"
    except httpx.ConnectError:
        outcome = "refused"
    except httpx.TransportError as err:
        outcome = f"dropped: {type(err).__name__}"
    outcomes[i] = (scheduled, sent - scheduled, loop.time() - scheduled, outcome)


async def generate(url, bodies, *, rate, count, poisson, seed, timeout, connections, sigterm=None) -> list:
    """Send ``count`` requests on the schedule; ``[(scheduled, send lag, latency, outcome)]`` in send order."""
    gaps = np.random.default_rng(seed).exponential(1 / rate, count) if poisson else np.full(count, 1 / rate)
    offsets = np.concatenate([[0.0], np.cumsum(gaps[1:])])
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    outcomes = [None] * count
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout + 1)) as client:
        # one request first opens a connection, so the schedule does not start with a connect
        await client.get(url.rsplit("/v1/", 1)[0] + "/healthz")
        start = loop.time() + 0.05
        if sigterm is not None:
            pid, at = sigterm
            loop.call_at(start + at, os.kill, pid, signal.SIGTERM)
        tasks = []
        for i in range(count):
            scheduled = start + offsets[i]
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = bodies[i % len(bodies)]
            tasks.append(asyncio.create_task(_one(client, url, body, headers, scheduled, loop, outcomes, i, timeout)))
        await asyncio.gather(*tasks)
    return [(s - start, lag, latency, outcome) for s, lag, latency, outcome in outcomes]


def summarize(outcomes: list, rate: float) -> dict:
    """Counts, latency and lag percentiles, and the achieved rate of :func:`generate`'s outcomes."""
    kinds: dict[str, int] = {}
    for _, _, _, outcome in outcomes:
        kinds[str(outcome)] = kinds.get(str(outcome), 0) + 1
    ok = [latency for _, _, latency, outcome in outcomes if outcome == 200]
    span = max(s + latency for s, _, latency, _ in outcomes) if outcomes else 0.0
    return {
        "offered_rps": rate,
        "requests": len(outcomes),
        "outcomes": kinds,
        "errors": len(outcomes) - len(ok),
        "latency": percentiles(ok),
        "send_lag": percentiles([lag for _, lag, _, _ in outcomes]),
        "achieved_rps": round(len(ok) / span, 1) if span > 0 else 0.0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="a file of request bodies, one per line")
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--poisson", action="store_true", help="exponential gaps instead of constant ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as timed out")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--sigterm-pid", type=int)
    parser.add_argument("--sigterm-at", type=float)
    parser.add_argument("--outcomes", action="store_true", help="list every request's outcome too")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.count < 1 or args.timeout <= 0 or args.connections < 1:
        parser.error("--rate, --timeout must be > 0 and --count, --connections >= 1")
    with open(args.bodies, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    sigterm = (args.sigterm_pid, args.sigterm_at) if args.sigterm_pid is not None else None
    outcomes = asyncio.run(
        generate(
            args.url,
            bodies,
            rate=args.rate,
            count=args.count,
            poisson=args.poisson,
            seed=args.seed,
            timeout=args.timeout,
            connections=args.connections,
            sigterm=sigterm,
        )
    )
    summary = summarize(outcomes, args.rate)
    if args.outcomes:
        summary["each"] = [[round(s, 4), round(latency, 4), outcome] for s, _, latency, outcome in outcomes]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
