"""Group discovery plus shrink of the reference ViT, timed end to end: what a user waits for before the smaller model runs.

Run: ``python bench/shrink_vit.py --quick`` (3 repeats) or ``python
bench/shrink_vit.py`` (7). The last line printed is one JSON object
``{"bench": "shrink_vit", "env", "results", "targets"}``; ``bench/shrink.py``
calls :func:`run`.

The model: ``hamjax.models.build("vit")`` (NNX, 28x28x1 inputs, random
init) through :func:`hamjax.functional`, and an input batch of 2. Each
repeat counts the wall time of, in this order:
:func:`hamjax.prune.channel_groups` (tracing included),
``prune.group_channels`` at sparsity 0.5 (group L2), ``prune.shrink_groups``
and one call of ``jax.jit`` of the shrunk apply function on the batch
(compilation included, result ready). ``shrink_groups`` returns a new
apply function every time, so every repeat compiles it afresh. Each stage's
seconds are reported too.

Target (issue 18): discovery plus shrink of the ViT < 5 s, on the slowest
repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import hamjax
from hamjax import measure, models, prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import finish

SPARSITY = 0.5


def discover_and_shrink(apply_fn, params, x) -> tuple[dict, object]:
    """One timed pass: ``({stage: seconds, "total_s"}, shrunk params)``."""
    stages = {}
    started = last = time.perf_counter()

    def lap(name):
        nonlocal last
        now = time.perf_counter()
        stages[name] = round(now - last, 4)
        last = now

    groups = prune.channel_groups(apply_fn, params, x)
    lap("channel_groups_s")
    keep = prune.group_channels(params, groups, SPARSITY)
    lap("group_channels_s")
    apply_s, params_s = prune.shrink_groups(apply_fn, params, x, groups, keep)
    lap("shrink_groups_s")
    jax.block_until_ready(jax.jit(apply_s)(params_s, x))
    lap("first_jit_call_s")
    stages["total_s"] = round(time.perf_counter() - started, 4)
    stages["prunable_groups"] = sum(g.prunable for g in groups)
    stages["groups"] = len(groups)
    return stages, params_s


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Time discovery plus shrink of the reference ViT.

    Args:
      quick: 3 repeats instead of 7.

    Returns:
      ``(results, targets)``.
    """
    repeats = 3 if quick else 7
    apply_fn, params = hamjax.functional(models.build("vit"))
    x = jnp.ones((2, 28, 28, 1), jnp.float32)
    passes = []
    for _ in range(repeats):
        stages, params_s = discover_and_shrink(apply_fn, params, x)
        passes.append(stages)
    totals = [p["total_s"] for p in passes]
    results = [
        {
            "model": "vit (reference, NNX)",
            "params_dense": measure.param_count(params),
            "params_shrunk": measure.param_count(params_s),
            "repeats": repeats,
            "total_s_median": round(statistics.median(totals), 4),
            "total_s_max": max(totals),
            "passes": passes,
        }
    ]
    targets = [
        {
            "name": "vit channel_groups + group_channels + shrink_groups + first jitted call, slowest repeat (s)",
            "measured": max(totals),
            "goal": "< 5",
            "met": max(totals) < 5,
        }
    ]
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("shrink_vit", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
