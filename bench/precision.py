"""Mixed-precision benchmark: training-step time and accuracy under float32, bfloat16 and float16 compute.

Run: ``python bench/precision.py [--quick]``. The last line printed is one
JSON object: ``{"bench": "precision", "env", "quick", "results", "targets"}``.
Another bench script can take the section with ``run(quick)``.

* The MLP 784-512-512-10 and the CNN (LeNet-like, batch norm) on the
  bundled MNIST subset, trained with the same config and seed under three
  policies: ``f32`` (no policy), ``bf16`` (``p=f32,c=bf16,o=f32``) and
  ``f16`` (``p=f32,c=f16,o=f32`` with dynamic loss scaling). Test accuracy
  of each, and the drop against float32 in the same run.
* The time of one jitted training step at batch 128 for each policy: the
  median over interleaved rounds of timed steps after warm-up, and the
  ratio to float32 in each round. XLA:CPU has no fast bfloat16 or float16
  matmuls, so on a CPU the ratios are above 1; they are reported as
  measured.
* On a GPU, the ViT's bf16/f32 step-time ratio at batch 256 as well.
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
from hamjax import measure, precision
from hamjax._base import trainable
from hamjax.train import TrainConfig, TrainState, evaluate, fit, make_optimizer, make_train_step

POLICIES = {"f32": None, "bf16": "p=f32,c=bf16,o=f32", "f16": "p=f32,c=f16,o=f32"}


def _model(name, ds, seed):
    return hamjax.functional(hamjax.models.build(name, seed=seed, input_shape=ds.input_shape))


def train_and_test(name, ds, epochs, seed):
    """Test accuracy after training under each policy, plus the float16 run's final loss-scale state."""
    out = {}
    for label, spec in POLICIES.items():
        apply_fn, params = _model(name, ds, seed)
        config = TrainConfig(epochs=epochs, batch_size=128, learning_rate=1e-3, seed=seed, precision=spec)
        result = fit(apply_fn, params, ds, config, progress=False)
        served = precision.with_policy(apply_fn, spec) if spec else apply_fn
        row = {"test_accuracy": evaluate(served, result.params, ds.test)["accuracy"]}
        opt_state = result.state.opt_state
        if isinstance(opt_state, precision.DynamicLossScaleState):
            row.update(final_loss_scale=float(opt_state.loss_scale), skipped_steps=int(opt_state.skipped_count))
        out[label] = row
        print(f"  {name} {label:5s} seed {seed} acc={row['test_accuracy']:.4f}", file=sys.stderr)
    return out


def step_times(name, ds, batch, steps, repeats, seed, labels=tuple(POLICIES)):
    """Median ms per training step for each policy and the median per-round ratio to float32."""
    x, y = data_lib.batch_at(ds.train, batch, 0, seed=seed)
    x, y = jnp.asarray(x), jnp.asarray(y)
    base_fn, base_params = _model(name, ds, seed)
    runs = {}
    for label in labels:
        apply_fn, params, opt = precision.prepare_training(
            base_fn, base_params, make_optimizer(TrainConfig(), 1000), POLICIES[label]
        )
        state = TrainState(jax.tree.map(jnp.array, params), opt.init(trainable(apply_fn, params)), jnp.asarray(0))
        runs[label] = [make_train_step(apply_fn, opt, seed=seed), state]

    def timed(label):
        step, state = runs[label]
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, x, y)
        jax.block_until_ready((state, metrics))
        runs[label][1] = state
        return 1e3 * (time.perf_counter() - start) / steps

    for label in labels:  # compile and warm up
        timed(label)
    times = {label: [] for label in labels}
    for _ in range(repeats):  # interleaved, so every policy sees the same machine load
        for label in labels:
            times[label].append(timed(label))
    out = {}
    for label in labels:
        ratios = [t / f for t, f in zip(times[label], times["f32"], strict=True)]
        out[label] = {"step_ms": statistics.median(times[label]), "step_time_ratio_vs_f32": statistics.median(ratios)}
        print(f"  {name} {label:5s} step {out[label]['step_ms']:.2f} ms", file=sys.stderr)
    return out


def _drop(results, model, label):
    """Accuracy drop in points against float32, averaged over seeds (accuracies are k / 1000: round off float noise)."""
    rows = [r for r in results if r["part"] == "accuracy" and r["model"] == model]
    f32 = statistics.mean(r["test_accuracy"] for r in rows if r["policy"] == "f32")
    other = statistics.mean(r["test_accuracy"] for r in rows if r["policy"] == label)
    return round(100 * (f32 - other), 9)


def run(quick: bool, seed: int = 0) -> dict:
    """Run the benchmark; return the JSON-ready dict that :func:`main` prints."""
    ds = data_lib.load("mnist", seed=seed)
    epochs = {"mlp": 10, "cnn": 8} if quick else {"mlp": 20, "cnn": 15}
    seeds = (seed,) if quick else (seed, seed + 1, seed + 2)
    steps, repeats = (10, 5) if quick else (20, 11)
    on_gpu = jax.default_backend() == "gpu"

    results = []
    for name in ("mlp", "cnn"):
        for s in seeds:
            for label, row in train_and_test(name, ds, epochs[name], s).items():
                results.append(
                    {"part": "accuracy", "model": name, "policy": label, "policy_string": POLICIES[label], "seed": s}
                    | row
                    | {"epochs": epochs[name]}
                )
        for label, row in step_times(name, ds, 128, steps, repeats, seed).items():
            results.append(
                {"part": "step_time", "model": name, "policy": label, "batch": 128, "backend": jax.default_backend()}
                | row
            )
    if on_gpu:
        vit = step_times("vit", ds, 256, steps, repeats, seed, labels=("f32", "bf16"))
        for label, row in vit.items():
            results.append({"part": "step_time", "model": "vit", "policy": label, "batch": 256, "backend": "gpu"} | row)

    targets = []
    for model, label, what in (
        ("mlp", "bf16", "bf16"),
        ("cnn", "bf16", "bf16"),
        ("mlp", "f16", "f16+dynamic loss scale"),
    ):
        drop = _drop(results, model, label)
        targets.append(
            {
                "name": f"{what} accuracy drop vs f32 (points), {model.upper()}",
                "measured": round(drop, 3),
                "goal": "<= 0.5",
                "met": drop <= 0.5,
            }
        )
    if on_gpu:
        ratio = next(
            r["step_time_ratio_vs_f32"]
            for r in results
            if r["part"] == "step_time" and r["model"] == "vit" and r["policy"] == "bf16"
        )
        targets.append(
            {"name": "bf16/f32 step time, ViT, GPU", "measured": round(ratio, 3), "goal": "<= 0.8", "met": ratio <= 0.8}
        )
    return {"bench": "precision", "env": measure.environment(), "quick": quick, "results": results, "targets": targets}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs and repeats (< 4 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, seed=args.seed)))


if __name__ == "__main__":
    main()
