"""What the benchmarks share: interleaved timing on a noisy machine, batched logits, the JSON last line.

Imported by the scripts beside it (``python bench/NAME.py`` puts ``bench/`` on
the path), never by hamjax.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hamjax import measure


def burst_runs(runner, x: np.ndarray, burst_s: float, *, max_runs: int = 500) -> int:
    """Timed calls that make a burst of about ``burst_s`` seconds, from a short probe after warm-up."""
    measure.latency(runner, x, warmup=3, runs=1)
    probe = measure.latency(runner, x, warmup=0, runs=5)
    return int(min(max_runs, max(10, math.ceil(burst_s / max(probe.p50_ms / 1e3, 1e-6)))))


def interleaved_timings(
    runners: dict, x: np.ndarray, rounds: int, burst_s: float = 0.3, *, max_runs: int = 500
) -> dict:
    """Per runner: medians over ``rounds`` of its burst p50 and p95, runners taking turns in each round.

    The machine is shared and noisy, so every round times each runner for a
    short burst (order rotating from round to round), and ratios compare the
    medians over rounds, measured under the same load.
    """
    runs = {name: burst_runs(r, x, burst_s, max_runs=max_runs) for name, r in runners.items()}
    names = list(runners)
    bursts = {name: [] for name in names}
    for k in range(rounds):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            bursts[name].append(measure.latency(runners[name], x, warmup=3, runs=runs[name]))
    out = {}
    for name, lats in bursts.items():
        p50 = statistics.median(lat.p50_ms for lat in lats)
        out[name] = {
            "p50_ms": p50,
            "p95_ms": statistics.median(lat.p95_ms for lat in lats),
            "samples_per_s": len(x) / (p50 / 1e3),
            "runs_per_round": runs[name],
            "round_p50_ms": [round(lat.p50_ms, 4) for lat in lats],
        }
    return out


def interleaved_p50(runners: dict, x: np.ndarray, rounds: int, burst_s: float = 0.3, *, max_runs: int = 500) -> dict:
    """Per runner: the median burst p50 in ms (:func:`interleaved_timings`)."""
    return {
        name: t["p50_ms"] for name, t in interleaved_timings(runners, x, rounds, burst_s, max_runs=max_runs).items()
    }


def step_timings(variants: dict, apply_fn, params, x, y, rounds: int, burst: int) -> tuple[dict, dict, dict]:
    """Median milliseconds of jitted training steps, interleaved.

    Returns ``({name: median ms}, {name: loss after warm-up}, {name: [ms per round]})``.

    ``variants`` maps a name to ``(optimizer, objective)`` (``objective`` may be
    ``None``); each becomes one :func:`hamjax.train.make_train_step` from the same
    params. After three warm-up steps (compiling), every round times a burst of
    ``burst`` steps of each variant, the order rotating from round to round; a
    burst's figure is its median step and a variant's the median over rounds.
    """
    from hamjax._base import trainable
    from hamjax.train import TrainState, make_train_step

    steps, states, losses = {}, {}, {}
    for name, (optimizer, objective) in variants.items():
        steps[name] = make_train_step(apply_fn, optimizer, objective=objective)
        start = jax.tree.map(jnp.array, params)
        states[name] = TrainState(start, optimizer.init(trainable(apply_fn, start)), jnp.asarray(0, jnp.int32))
        for _ in range(3):  # warm-up: compiles
            states[name], metrics = steps[name](states[name], x, y)
        losses[name] = float(metrics["loss"])
    step_ms, per_round = interleaved_steps(steps, states, x, y, rounds, burst)
    return step_ms, losses, per_round


def interleaved_steps(steps: dict, states: dict, x, y, rounds: int, burst: int) -> tuple[dict, dict]:
    """Time compiled train steps in interleaved bursts: ``({name: median ms}, {name: [ms per round]})``.

    ``steps[name](state, x, y) -> (state, metrics)`` runs from ``states[name]``,
    which is replaced by each new (donated) state. Every round times ``burst``
    steps of each, the order rotating from round to round; a burst's figure is
    its median step and a step's figure the median over rounds.
    """
    names = list(steps)
    per_round = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times = []
            for _ in range(burst):
                started = time.perf_counter()
                states[name], metrics = steps[name](states[name], x, y)
                jax.block_until_ready(metrics["loss"])
                times.append(time.perf_counter() - started)
            per_round[name].append(statistics.median(times) * 1e3)
    return {name: statistics.median(per_round[name]) for name in names}, per_round


def logits(apply_fn, params, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """``apply_fn(params, x)`` under jit, ``batch`` rows at a time, as one numpy array."""
    f = jax.jit(apply_fn)
    return np.concatenate([np.asarray(f(params, x[i : i + batch])) for i in range(0, len(x), batch)])


def environment() -> dict:
    """:func:`hamjax.measure.environment` plus ``cpu_flags_avx512``: the AVX-512 flags ``/proc/cpuinfo`` lists (as ``lscpu``)."""
    try:
        flags = sorted(set(re.findall(r"\bavx512[a-z_0-9]*", Path("/proc/cpuinfo").read_text())))
    except OSError:
        flags = []
    return {**measure.environment(), "cpu_flags_avx512": flags}


def finish(bench: str, results: list, targets: list) -> int:
    """Print each target, then the one JSON line every benchmark ends with; the exit status 0."""
    for t in targets:
        measured = f"{t['measured']:.4g}" if isinstance(t["measured"], float) else t["measured"]
        print(f"{t['name']}: {measured} (goal {t['goal']}) {'met' if t['met'] else 'NOT met'}")
    print(json.dumps({"bench": bench, "env": environment(), "results": results, "targets": targets}))
    return 0


def run_parts(bench: str, parts: tuple[str, ...], description: str, argv=None) -> int:
    """The main of a benchmark made of parts: ``bench/BENCH_PART.py`` each exposing ``run(quick) -> (results, targets)``.

    Parses ``--quick`` and ``--parts``, runs the parts one after another in
    this process, tags every result and target with its ``part``, and prints
    the one JSON line.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="every part's short variant")
    parser.add_argument("--parts", default=",".join(parts), help=f"comma list from {','.join(parts)}")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(parts))
    if unknown or not chosen:
        parser.error(f"--parts: expected a comma list from {','.join(parts)}, got {args.parts!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    results, targets = [], []
    for part in chosen:
        module = importlib.import_module(f"{bench}_{part}")
        started = time.perf_counter()
        part_results, part_targets = module.run(args.quick)
        seconds = round(time.perf_counter() - started, 1)
        results.extend({"part": part, **row} for row in part_results)
        results.append({"part": part, "seconds": seconds})
        targets.extend({"part": part, **target} for target in part_targets)
        print(f"{bench}/{part}: {seconds} s, targets met {sum(t['met'] for t in part_targets)}/{len(part_targets)}")
        sys.stdout.flush()
    print(json.dumps({"bench": bench, "env": environment(), "results": results, "targets": targets}))
    return 0
