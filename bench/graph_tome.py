"""Token merging benchmark: a ViT on MNIST with 49 tokens, merged without retraining, speed and accuracy.

Run: ``python bench/graph_tome.py --quick`` (3 epochs, 5 timing rounds;
about 3 minutes on 2 cores) or ``python bench/graph_tome.py`` (8 epochs,
9 rounds). The last line printed is one JSON object: ``{"bench":
"graph_tome", "env", "results", "targets"}``.

A ViT with 4x4 patches (49 tokens), width 64, 4 blocks of 4 heads is
trained on the bundled MNIST subset with ``hamjax.fit`` (batch 128,
learning rate 2e-3). :func:`hamjax.graph.merge_tokens` then merges ``r``
tokens per block for each ``r`` in :data:`R_VALUES` (no retraining). For
each ``r``: the token counts the blocks see, validation and test accuracy,
and the throughput at batch 256 under ``jax.jit``. Runners are
interleaved: every round times each model for a short burst, the order
rotating from round to round, and a model's latency is the median over
rounds of its burst medians; ratios compare these medians from one run.

``r`` is chosen on the validation split (the largest ``r`` whose
validation accuracy is within 1.0 point of the unmerged model's), and the
targets are measured on the test split: throughput of the chosen ``r``
over the unmerged model at batch 256 >= 1.4, and its test accuracy within
1.0 point.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from timing import finish, interleaved_p50

import hamjax
from hamjax import measure
from hamjax.graph import merge_plan, merge_tokens
from hamjax.train import TrainConfig, fit

R_VALUES = (0, 2, 4, 6, 8, 9)  # 9: 49, 40, 31, 22 tokens; 10 would need 10 of the 19 left at block 3
BATCH = 256
SPEEDUP_GOAL = 1.4
ACCURACY_DROP_GOAL = 1.0  # points


def run(quick: bool, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train the ViT, merge tokens at each ``r``, and measure; ``(results, targets)``."""
    epochs, rounds = (3, 5) if quick else (8, 9)
    ds = hamjax.data.load("mnist", seed=seed)
    module = hamjax.models.build(
        "vit",
        seed=seed,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        patch_size=4,
        hidden_size=64,
        num_layers=4,
        num_heads=4,
    )
    apply_fn, params = hamjax.functional(module)
    started = time.perf_counter()
    config = TrainConfig(epochs=epochs, batch_size=128, learning_rate=2e-3, seed=seed)
    params = fit(apply_fn, params, ds, config, progress=False).params
    train_s = time.perf_counter() - started
    x = np.asarray(ds.test.x[:BATCH])
    rows, runners = [], {}
    for r in R_VALUES:
        merged, _ = merge_tokens(apply_fn, params, x, r)
        runners[r] = measure.JaxRunner(merged, params, name=f"r={r}")
        rows.append(
            {
                "model": "vit 4x4 patches",
                "r": r,
                "tokens": list(merge_plan(apply_fn, params, x, r).tokens),
                "val_accuracy": measure.accuracy(merged, ds.val.x, ds.val.y, params=params, batch_size=250),
                "test_accuracy": measure.accuracy(merged, ds.test.x, ds.test.y, params=params, batch_size=250),
            }
        )
    p50 = interleaved_p50(runners, x, rounds, burst_s=0.3, max_runs=200)
    base = rows[0]
    for row in rows:
        row.update(
            batch=BATCH,
            rounds=rounds,
            p50_ms=round(p50[row["r"]], 3),
            samples_per_s=round(BATCH / (p50[row["r"]] / 1e3), 1),
            speedup=p50[0] / p50[row["r"]],
            test_accuracy_drop_points=100 * (base["test_accuracy"] - row["test_accuracy"]),
        )
    ok = [row for row in rows if 100 * (base["val_accuracy"] - row["val_accuracy"]) <= ACCURACY_DROP_GOAL]
    chosen = max(ok, key=lambda row: row["r"])
    summary = {
        "model": "vit 4x4 patches",
        "epochs": epochs,
        "train_s": round(train_s, 2),
        "params": measure.param_count(params),
        "chosen_r": chosen["r"],
        "chosen_by": f"largest r within {ACCURACY_DROP_GOAL} point of r=0 on the validation split",
    }
    targets = [
        {
            "name": f"tome vit: r={chosen['r']} / r=0 throughput at batch {BATCH} under jit",
            "measured": chosen["speedup"],
            "goal": f">= {SPEEDUP_GOAL}",
            "met": chosen["speedup"] >= SPEEDUP_GOAL,
        },
        {
            "name": f"tome vit: r={chosen['r']} test accuracy drop vs r=0 (points)",
            "measured": chosen["test_accuracy_drop_points"],
            "goal": f"<= {ACCURACY_DROP_GOAL}",
            "met": chosen["test_accuracy_drop_points"] <= ACCURACY_DROP_GOAL,
        },
    ]
    return [*rows, summary], targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs and 5 timing rounds (about 3 minutes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results, targets = run(args.quick, args.seed)
    for row in results:
        if "r" in row:
            print(
                f"r={row['r']:>2}  tokens {row['tokens']}  val {row['val_accuracy']:.3f}  test {row['test_accuracy']:.3f}"
                f"  {row['samples_per_s']:>9.1f} samples/s  x{row['speedup']:.2f}"
            )
    return finish("graph_tome", results, targets)


if __name__ == "__main__":
    sys.exit(main())
