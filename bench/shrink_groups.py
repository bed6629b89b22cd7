"""Channel-group discovery benchmark: how long ``prune.channel_groups`` and ``prune.group_masks`` take.

Run: ``python bench/shrink_groups.py --quick`` (3 timed repeats) or
``python bench/shrink_groups.py`` (9). The last line printed is one JSON
object ``{"bench": "shrink_groups", "env", "results", "targets"}``;
``bench/shrink.py`` calls :func:`run`.

For the MLP, CNN and ViT reference models (NNX, built for 28x28x1 inputs),
measured: the number of groups and of prunable groups, and the median
seconds of :func:`hamjax.prune.channel_groups` (tracing included) and of
:func:`hamjax.prune.group_masks` at sparsity 0.5 (masks ready), after one
warm-up call.

Target: group discovery of the ViT under 5 s. The issue's bound is for
discovery plus physical shrink; the shrink of arbitrary models is not built
yet, so this part measures the discovery alone.
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
from hamjax import models, prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import finish

MODELS = ("mlp", "cnn", "vit")


def _median_seconds(repeats: int, fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Time group discovery and masking on the reference models.

    Args:
      quick: 3 timed repeats instead of 9.

    Returns:
      ``(results, targets)``.
    """
    repeats = 3 if quick else 9
    x = jnp.ones((2, 28, 28, 1), jnp.float32)
    results = []
    for name in MODELS:
        apply_fn, variables = hamjax.functional(models.build(name))
        groups = prune.channel_groups(apply_fn, variables, x)
        results.append(
            {
                "model": name,
                "groups": len(groups),
                "prunable_groups": sum(g.prunable for g in groups),
                "discovery_s": round(_median_seconds(repeats, prune.channel_groups, apply_fn, variables, x), 4),
                "masks_s": round(_median_seconds(repeats, prune.group_masks, variables, groups, 0.5), 4),
            }
        )
    vit = next(r for r in results if r["model"] == "vit")
    targets = [
        {
            "name": "vit_group_discovery_s (discovery only; bench/shrink.py part vit times discovery + shrink)",
            "measured": vit["discovery_s"],
            "goal": "< 5",
            "met": vit["discovery_s"] < 5,
        }
    ]
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed repeats instead of 9")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("shrink_groups", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
