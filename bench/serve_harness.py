"""What the parts of bench/serve.py share: servers in subprocesses on 127.0.0.1, the load generator, /metrics.

Both servers run as their own processes (uvicorn, one worker), each started
with the same runtime thread count (the CPUs this process may use) and
stopped with SIGTERM (SIGKILL after a grace period); the load generator
(bench/serve_load.py) runs as a third process, so the bench process itself
only waits. All of them bind 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import serve_models

BENCH = Path(__file__).resolve().parent
THREADS = len(os.sched_getaffinity(0))
MAX_BATCH = 32
MAX_WAIT_MS = 2.0
P99_GOAL_MS = 50.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bodies_file(n: int = 64, seed: int = 0) -> Path:
    """A file of ``n`` JSON request bodies ``{"inputs": [one test image]}``, one per line (written once)."""
    path = serve_models.folder() / f"bodies-{n}-{seed}.jsonl"
    if not path.exists():
        x = serve_models.inputs(n, seed)
        lines = [json.dumps({"inputs": x[i : i + 1].round(4).tolist()}, separators=(",", ":")) for i in range(n)]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(path)
    return path


class Server:
    """A server subprocess on 127.0.0.1: ``with Server.naive(model) as s: ...`` (or ``Server.hamjax``).

    Its output goes to a log file in the models' folder; on leaving the
    ``with`` block (or :meth:`stop`) it gets SIGTERM and, after 30 s, SIGKILL.
    """

    def __init__(self, kind: str, argv: list[str], port: int):
        self.kind, self.port = kind, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = serve_models.folder() / f"{kind}-{port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.perf_counter()

    @classmethod
    def naive(cls, model: str) -> Server:
        port = free_port()
        argv = [sys.executable, str(BENCH / "serve_naive.py"), model, "--port", str(port), "--threads", str(THREADS)]
        return cls("naive", argv, port)

    @classmethod
    def hamjax(cls, model: str, *extra: str) -> Server:
        port = free_port()
        state = serve_models.folder() / f"state-{port}"
        argv = [sys.executable, "-m", "hamjax.cli", "serve", model, "--port", str(port), "--threads", str(THREADS)]
        argv += ["--max-batch", str(MAX_BATCH), "--max-wait-ms", str(MAX_WAIT_MS), "--state-dir", str(state)]
        return cls("hamjax", argv + list(extra), port)

    def wait_ready(self, timeout: float = 180.0, client: httpx.Client | None = None) -> float:
        """Poll ``/readyz`` until 200; the seconds since start. Raises RuntimeError if the process exits or time runs out."""
        own = client is None
        client = client or httpx.Client(timeout=5.0)
        try:
            while time.perf_counter() - self.started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.kind} server exited ({self.process.returncode}): {self.tail()}")
                try:
                    if client.get(self.url + "/readyz").status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        finally:
            if own:
                client.close()
        raise RuntimeError(f"{self.kind} server not ready after {timeout} s: {self.tail()}")

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until ``/healthz`` answers within 20 ms (a backlog from an overloaded step has cleared)."""
        deadline = time.perf_counter() + timeout
        with httpx.Client(timeout=5.0) as client:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                with contextlib.suppress(httpx.TransportError):
                    client.get(self.url + "/healthz")
                if time.perf_counter() - started < 0.02:
                    time.sleep(0.3)
                    return
                time.sleep(0.2)

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_load(server: Server, rate: float, count: int, *, timeout: float = 2.0, seed: int = 0, **extra):
    """Start bench/serve_load.py against ``server``'s ``/v1/predict`` (Poisson arrivals); the Popen (stdout piped).

    ``extra``: ``sigterm_at=S`` (SIGTERM to the server S seconds in), ``outcomes=True``.
    """
    argv = [sys.executable, str(BENCH / "serve_load.py"), "--url", server.url + "/v1/predict"]
    argv += ["--bodies", str(bodies_file()), "--rate", str(rate), "--count", str(count), "--poisson"]
    argv += ["--seed", str(seed), "--timeout", str(timeout)]
    if "sigterm_at" in extra:
        argv += ["--sigterm-pid", str(server.process.pid), "--sigterm-at", str(extra["sigterm_at"])]
    if extra.get("outcomes"):
        argv.append("--outcomes")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_load(process, limit: float) -> dict:
    """Wait for a :func:`start_load` process (at most ``limit`` seconds); its JSON summary."""
    try:
        out, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise RuntimeError(f"load generator still running after {limit:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed ({process.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def load(server: Server, rate: float, count: int, *, timeout: float = 2.0, seed: int = 0, **extra) -> dict:
    """Run bench/serve_load.py against ``server`` to the end (:func:`start_load`); its JSON summary."""
    process = start_load(server, rate, count, timeout=timeout, seed=seed, **extra)
    return finish_load(process, count / rate + 2 * timeout + 60)


class RateSearch:
    """The highest offered rate (requests/s) one server sustains with 0 errors and p99 <= 50 ms.

    The rate grows by 1.5x from ``start`` until a step fails (halves while
    none has passed, down to ``floor``), then ``refine`` bisections between
    the highest passing and the lowest failing rate; ``best`` is 0.0 when
    even ``floor`` fails.
    """

    def __init__(self, start: float, refine: int, floor: float = 10.0, max_steps: int = 12):
        self.rate, self.refine, self.floor, self.max_steps = start, refine, floor, max_steps
        self.best, self.failed, self.bisections, self.steps, self.done = 0.0, None, 0, [], False

    def record(self, summary: dict) -> None:
        """Take one step's load summary and choose the next rate (or finish)."""
        ok = summary["errors"] == 0 and summary["latency"]["p99_ms"] <= P99_GOAL_MS
        fields = ("outcomes", "latency", "send_lag", "achieved_rps")
        self.steps.append({"rate": round(self.rate, 1), "ok": ok, **{k: summary[k] for k in fields}})
        if ok:
            self.best = max(self.best, self.rate)
        else:
            self.failed = self.rate if self.failed is None else min(self.failed, self.rate)
        if self.failed is None:
            self.rate *= 1.5
        elif self.best == 0.0 and self.failed / 2 >= self.floor:
            self.rate = self.failed / 2
        elif self.best > 0.0 and self.bisections < self.refine:
            self.bisections += 1
            self.rate = (self.best + self.failed) / 2
        else:
            self.done = True
        self.done = self.done or len(self.steps) >= self.max_steps


def sustainable(servers: dict, *, start: float, step_s: float, refine: int, least: int = 300) -> dict:
    """:class:`RateSearch` for each of ``servers`` (name -> :class:`Server`), their steps interleaved.

    The servers take turns, one step each, so a change in the shared
    machine's load falls on all of them alike. Each step offers
    ``max(least, rate * step_s)`` requests (a p99 needs a few hundred
    answers to mean anything); before each, the server's backlog from its
    last step clears. Returns ``{name: RateSearch}``.
    """
    searches = {name: RateSearch(start, refine) for name in servers}
    while not all(search.done for search in searches.values()):
        for name, search in searches.items():
            if not search.done:
                servers[name].settle()
                search.record(load(servers[name], search.rate, int(max(least, search.rate * step_s))))
    return searches


def metrics_text(server: Server) -> str:
    """``GET /metrics`` of a running server."""
    return httpx.get(server.url + "/metrics", timeout=10.0).text


def histogram(text: str, name: str) -> dict:
    """``{le: cumulative count}`` summed over label sets, from Prometheus text for histogram ``name``."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    return dict(sorted(buckets.items()))


def rss_bytes(server: Server) -> int:
    """Resident memory of the server process."""
    import psutil

    return psutil.Process(server.process.pid).memory_info().rss


def median(values) -> float:
    return float(np.median(np.asarray(values, np.float64)))
