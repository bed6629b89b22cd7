"""Pruning benchmark: accuracy vs sparsity, structured shrink speed, masked step cost.

Run: ``python bench/prune.py [--quick] [--plot PATH]``. The last line printed
is one JSON object: ``{"bench": "prune", "env", "results", "targets"}``.

* Accuracy vs sparsity for magnitude (layer-wise), global magnitude and
  saliency (SNIP), each pruning the trained model once and finetuning with
  the masks kept, and movement pruning during training from the start,
  on the MLP (LeNet-300-100) and the CNN (LeNet-like), MNIST subset; plus
  iterative global magnitude pruning to 90% in three prune -> finetune cycles.
  The 90% target takes the best method at 90%.
* Structured 50% neurons + shrink on the default MLP 784-512-512-10:
  throughput at batch 256 under jit against the dense model, and accuracy.
* The cost of a masked training step against a dense one (same run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import hamjax
from hamjax import data as data_lib
from hamjax import measure, prune
from hamjax._base import trainable, with_trainable
from hamjax.train import TrainConfig, TrainState, batch_grads, evaluate, fit, make_optimizer, make_train_step

METHODS = ("magnitude", "global_magnitude", "saliency", "movement")


def _finetune(apply_fn, params, ds, epochs, optimizer_for, seed):
    cfg = TrainConfig(epochs=epochs, batch_size=128, learning_rate=5e-4, seed=seed)
    total = data_lib.steps_per_epoch(len(ds.train.y), cfg.batch_size) * epochs
    return fit(apply_fn, params, ds, cfg, optimizer=optimizer_for(make_optimizer(cfg, total), total), progress=False)


def movement_from_scratch(sparsity, apply_fn, init, ds, epochs, seed):
    """Movement pruning as Sanh et al. use it: scores accumulate over a whole training run.

    Accumulated over a short finetuning of an already-trained network, the
    -w*g scores are noise (uncorrelated with |w| on the trained CNN) and the
    masks they give collapse it, so movement trains from the initial params
    with the dense model's epoch budget, pruning along a cubic schedule.
    """
    cfg = TrainConfig(epochs=epochs, batch_size=128, learning_rate=1e-3, seed=seed)
    total = data_lib.steps_per_epoch(len(ds.train.y), cfg.batch_size) * epochs
    sched = prune.polynomial_schedule(sparsity, end_step=max(1, int(0.75 * total)), update_every=max(1, total // 20))
    opt = prune.masked_optimizer(make_optimizer(cfg, total), method="movement", schedule=sched)
    final = fit(apply_fn, init, ds, cfg, optimizer=opt, progress=False).state.params  # the last are at the target
    return evaluate(apply_fn, final, ds.test)["accuracy"], prune.sparsity_of(trainable(apply_fn, final))


def prune_and_finetune(method, sparsity, apply_fn, dense, ds, epochs, seed):
    """Prune the dense params once with ``method``, finetune with masks kept; return test accuracy and sparsity."""
    tp = trainable(apply_fn, dense)
    if method == "saliency":
        masks = prune.saliency_masks(tp, batch_grads(apply_fn, dense, ds.train, 256, seed=seed), sparsity)
    else:
        masks = prune.magnitude_masks(tp, sparsity, scope="global" if method == "global_magnitude" else "layer")
    params = with_trainable(apply_fn, dense, prune.apply_masks(tp, masks))
    final = _finetune(apply_fn, params, ds, epochs, lambda inner, total: prune.masked_optimizer(inner, masks), seed)
    acc = evaluate(apply_fn, final.params, ds.test)["accuracy"]
    return acc, prune.sparsity_of(trainable(apply_fn, final.params))


def accuracy_curves(ds, sparsities, epochs, dense_epochs, seed):
    rows = []
    dense_acc = {}
    for name, overrides in (("mlp", {"sizes": (784, 300, 100, 10)}), ("cnn", {})):
        module = hamjax.models.build(name, seed=seed, input_shape=ds.input_shape, **overrides)
        apply_fn, params = hamjax.functional(module)
        dense = fit(
            apply_fn, params, ds, TrainConfig(epochs=dense_epochs, seed=seed, patience=5), progress=False
        ).params
        dense_acc[name] = evaluate(apply_fn, dense, ds.test)["accuracy"]
        for method in METHODS:
            for s in sparsities:
                if method == "movement":
                    acc, measured = movement_from_scratch(s, apply_fn, params, ds, dense_epochs, seed)
                else:
                    acc, measured = prune_and_finetune(method, s, apply_fn, dense, ds, epochs, seed)
                rows.append(
                    {"model": name, "method": method, "sparsity": s, "measured_sparsity": measured, "accuracy": acc}
                )
                print(f"  {name} {method:16s} s={s:.2f} acc={acc:.4f} (dense {dense_acc[name]:.4f})", file=sys.stderr)
        # Han et al. (2015) reached 90% through prune -> finetune cycles, not in one shot
        cfg = TrainConfig(epochs=max(1, epochs // 2), batch_size=128, learning_rate=5e-4, seed=seed)
        pruned, _, _ = prune.iterative_prune(apply_fn, dense, ds, (0.5, 0.75, 0.9), cfg, method="global_magnitude")
        acc = evaluate(apply_fn, pruned, ds.test)["accuracy"]
        measured = prune.sparsity_of(trainable(apply_fn, pruned))
        rows.append(
            {
                "model": name,
                "method": "iterative_global_magnitude",
                "sparsity": 0.9,
                "measured_sparsity": measured,
                "accuracy": acc,
            }
        )
        print(f"  {name} iterative global s=0.90 acc={acc:.4f}", file=sys.stderr)
    return dense_acc, rows


def _median_throughput(runner, x, runs):
    return measure.throughput(runner, x, [x.shape[0]], runs=runs, warmup=5)[0].samples_per_s


def structured_shrink(ds, epochs, dense_epochs, repeats, seed):
    module = hamjax.models.build("mlp", seed=seed, input_shape=ds.input_shape)
    config = hamjax.models.config_of(module)
    apply_fn, params = hamjax.functional(module)
    dense = fit(apply_fn, params, ds, TrainConfig(epochs=dense_epochs, seed=seed, patience=5), progress=False).params
    masks = prune.structured_masks(config, dense, 0.5, granularity="neurons")
    masked = prune.apply_masks(dense, masks)
    train_masks = trainable(apply_fn, masks)
    tuned = _finetune(
        apply_fn, masked, ds, epochs, lambda inner, total: prune.masked_optimizer(inner, train_masks), seed
    )
    small_fn, small = prune.shrunk_model(config, tuned.params, masks)
    x = ds.test.x[:256]
    dense_runner, small_runner = measure.JaxRunner(apply_fn, dense), measure.JaxRunner(small_fn, small)
    ratios, dense_tp, small_tp = [], [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        d = _median_throughput(dense_runner, x, 30)
        s = _median_throughput(small_runner, x, 30)
        dense_tp.append(d)
        small_tp.append(s)
        ratios.append(s / d)
    return {
        "dense_accuracy": evaluate(apply_fn, dense, ds.test)["accuracy"],
        "shrunk_accuracy": evaluate(small_fn, small, ds.test)["accuracy"],
        "dense_params": measure.param_count(dense),
        "shrunk_params": measure.param_count(small),
        "dense_samples_per_s": statistics.median(dense_tp),
        "shrunk_samples_per_s": statistics.median(small_tp),
        "throughput_ratio": statistics.median(ratios),
    }


def masked_step_cost(ds, steps, repeats, seed):
    module = hamjax.models.build("mlp", seed=seed, input_shape=ds.input_shape)
    apply_fn, params = hamjax.functional(module)
    tp = trainable(apply_fn, params)
    masks = prune.magnitude_masks(tp, 0.9)
    inner = make_optimizer(TrainConfig(), 1000)
    variants = {"dense": inner, "masked": prune.masked_optimizer(inner, masks)}
    x, y = data_lib.batch_at(ds.train, 128, 0, seed=seed)
    x, y = jnp.asarray(x), jnp.asarray(y)
    steps_fns = {k: make_train_step(apply_fn, opt, seed=seed) for k, opt in variants.items()}
    states = {
        k: TrainState(jax.tree.map(jnp.array, params), opt.init(tp), jnp.asarray(0)) for k, opt in variants.items()
    }

    def run(name):
        step, state = steps_fns[name], states[name]
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, x, y)
        jax.block_until_ready(metrics["loss"])
        states[name] = state
        return (time.perf_counter() - start) / steps

    for name in variants:  # warm-up and compile
        run(name)
    ratios, times = [], {k: [] for k in variants}
    for _ in range(repeats):
        d, m = run("dense"), run("masked")
        times["dense"].append(d)
        times["masked"].append(m)
        ratios.append(m / d)
    return {
        "dense_step_ms": 1e3 * statistics.median(times["dense"]),
        "masked_step_ms": 1e3 * statistics.median(times["masked"]),
        "ratio": statistics.median(ratios),
    }


def plot(rows, dense_acc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, model in zip(axes, ("mlp", "cnn"), strict=True):
        it = [r["accuracy"] for r in rows if r["model"] == model and r["method"] == "iterative_global_magnitude"]
        if it:
            ax.plot(
                [0.9], it, marker="*", markersize=12, linestyle="none", color="k", label="iterative global (3 cycles)"
            )
        for method in METHODS:
            pts = [(r["sparsity"], r["accuracy"]) for r in rows if r["model"] == model and r["method"] == method]
            ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        ax.axhline(dense_acc[model], color="k", linestyle="--", label="dense")
        ax.set_title(f"{model.upper()} on the MNIST subset")
        ax.set_xlabel("sparsity")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (movement: pruned during training)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sparsities, epochs and repeats (< 10 min)")
    parser.add_argument("--plot", default="bench/prune.png", help="where to write the accuracy curves PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick
    sparsities = (0.5, 0.9, 0.98) if quick else (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    epochs, dense_epochs = (6, 15) if quick else (10, 30)
    ds = data_lib.load("mnist", seed=args.seed)

    dense_acc, rows = accuracy_curves(ds, sparsities, epochs, dense_epochs, args.seed)
    plot(rows, dense_acc, args.plot)
    shrink = structured_shrink(ds, epochs, dense_epochs, repeats=5 if quick else 11, seed=args.seed)
    step = masked_step_cost(ds, steps=50, repeats=7 if quick else 21, seed=args.seed)

    targets = []
    for model in ("mlp", "cnn"):
        best90 = max(r["accuracy"] for r in rows if r["model"] == model and r["sparsity"] == 0.9)
        # accuracies are k / 1000 on the test split: round away float noise before comparing
        drop = round(100 * (dense_acc[model] - best90), 9)
        targets.append(
            {
                "name": f"{model}: accuracy drop at 90% unstructured sparsity (points)",
                "measured": round(drop, 3),
                "goal": "<= 1.0",
                "met": drop <= 1.0,
            }
        )
    targets.append(
        {
            "name": "structured 50% + shrink: throughput ratio at batch 256 (jit, CPU)",
            "measured": round(shrink["throughput_ratio"], 3),
            "goal": ">= 1.6",
            "met": shrink["throughput_ratio"] >= 1.6,
        }
    )
    sdrop = round(100 * (shrink["dense_accuracy"] - shrink["shrunk_accuracy"]), 9)
    targets.append(
        {
            "name": "structured 50% + shrink: accuracy drop after finetuning (points)",
            "measured": round(sdrop, 3),
            "goal": "<= 1.5",
            "met": sdrop <= 1.5,
        }
    )
    targets.append(
        {
            "name": "masked training step / dense step",
            "measured": round(step["ratio"], 3),
            "goal": "<= 1.10",
            "met": step["ratio"] <= 1.10,
        }
    )
    results = [
        {
            "part": "accuracy_vs_sparsity",
            "dense_accuracy": dense_acc,
            "rows": rows,
            "finetune_epochs": epochs,
            "plot": args.plot,
        },
        {"part": "structured_shrink", **shrink},
        {"part": "masked_step_cost", **step},
    ]
    print(
        json.dumps(
            {"bench": "prune", "env": measure.environment(), "quick": quick, "results": results, "targets": targets}
        )
    )


if __name__ == "__main__":
    main()
