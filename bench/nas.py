"""NAS benchmark: regularized evolution, 20 generations of 32, against the best reference model on the MNIST subset.

Run: ``python bench/nas.py --quick`` (under 10 minutes on 2 cores) or
``python bench/nas.py`` (a longer proxy and three retraining seeds);
``--seed`` sets the seed of everything trained or sampled. The last line
printed is one JSON object: ``{"bench": "nas", "env", "results", "targets"}``.

Data: the bundled MNIST subset, split as every bench splits it
(``hamjax.data.load("mnist")``, split seed 0): 3,500 training, 500
validation and 1,000 test images. The search trains on the training split
and scores on the validation split (which the reference also uses for early
stopping); the test split is read only to report the final accuracies, never
to choose anything.

Reference: the best reference model, the CNN (``hamjax.models.build("cnn")``,
107,830 parameters), trained in the same run exactly as ``bench/distill.py``
trains it: ``hamjax.fit`` with ``TrainConfig(epochs=20, patience=5, seed)``
(Adam at 1e-3, batch 128, the params of the best validation accuracy kept).

Search: :func:`hamjax.search.engine.run`, method ``"evolution"``
(regularized evolution, tournament of 8, mutation rate 0.3), 20 generations
of 32 candidates in both modes. Each candidate is trained from scratch as a
masked sub-network of its own supernet for ``steps`` Adam steps at 3e-3 at
batch 8 (``--quick``: 80 steps; default: 240) and scored on the 500
validation images. At equal compute, batch 8 ranked architectures better
than batch 32 with a quarter of the steps (the token models learn slowly at
first; after 1,280 images, a conv-conv-dense model scored 0.73 at batch 8
against 0.46 at batch 32). Candidates train with
``execution="sequential"`` (a compiled ``lax.map`` over members), which timed
faster than ``vmap`` here.

The space (:data:`SUPERNET`): 4x4 patches behind a convolutional stem (two
stride-2 3x3 convolutions with 16 and 32 channels, Xiao et al. 2021), token
width 48, 1 to 3 residual layers, each dense, depthwise-conv or identity, of
inner width 32, 64 or 96, with one of four activations. Attention is left
out (``ops``): at 49 tokens it is more than half of a supernet layer's
multiply-adds, and two models with attention layers, retrained as below,
reached 0.938 and 0.942 against 0.972 to 0.974 for conv-conv-dense: on this
data and budget its cost buys nothing. Every architecture of this space has
at most ``max_params`` parameters (reported; below the cap), so the cap
below never binds here; it is still applied, so that the bench stays right
for a larger space.

Winner: the candidate of highest validation accuracy in the whole history
among those whose materialised parameter count (:func:`nas.param_count`,
exact) is at most 50% of the reference's; ties go to fewer parameters, then
to the earlier candidate. The engine's own selection looks at validation
accuracy alone (``engine.py`` is not changed here), so the cap is applied to
the history afterwards; the engine's overall best is reported beside it.

Retraining: the winner is materialised (:func:`nas.materialise`) from a fresh
supernet initialisation and trained from scratch, not fine-tuned: search
candidates see 640 (default: 1,920) images, a fraction of an epoch, so their
weights are a ranking device, not a starting point. It gets the reference's
training budget (20 epochs at batch 128, patience 5, best validation params
kept) with the token model's optimizer settings: Adam at the search's
learning rate 3e-3 with a linear warm-up over 2 epochs (54 steps) and cosine
decay over the run (``TrainConfig(learning_rate=3e-3, warmup_steps=54)``; at
a constant 1e-3, as the reference trains, the conv-conv-dense model reached
only 0.954). These settings, the stem and leaving out attention were chosen
while this bench was developed, from runs of hand-picked architectures that
printed test as well as validation accuracy, so they are not free of the
test split's influence (the search and the choice of the winner are). As a
control, the reference CNN is also trained with the winner's settings and
reported beside it (``reference_same_recipe``, and the winner's
``gap_vs_same_recipe_points``); the targets use the reference as
``bench/distill.py`` trains it, which is what the target names.

Targets (measured in this run): the accuracy gap, reference test accuracy
minus the winner's, in points, ``<= 0.5``; the parameter ratio, winner /
reference, ``<= 0.5``. The default mode retrains reference and winner with
three seeds and takes the targets on the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np

import hamjax
from hamjax import measure, models
from hamjax.search import engine, nas

SUPERNET = nas.SupernetConfig(
    input_shape=(28, 28, 1),
    num_classes=10,
    patch_size=4,
    hidden_size=48,
    max_layers=3,
    widths=(32, 64, 96),
    num_heads=4,
    stem_channels=(16, 32),
    ops=("dense", "conv", "identity"),
)
GENERATIONS = 20
POPULATION = 32
LEARNING_RATE = 3e-3
PARAM_CAP = 0.5
EPOCHS = 20
PATIENCE = 5
WARMUP_STEPS = 54  # two epochs of 27 steps at batch 128


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reference_config(seed: int, **recipe) -> hamjax.TrainConfig:
    """The reference's training budget (``bench/distill.py``), optionally with another optimizer recipe."""
    return hamjax.TrainConfig(epochs=EPOCHS, patience=PATIENCE, seed=seed, **recipe)


def winner_config(seed: int) -> hamjax.TrainConfig:
    return reference_config(seed, learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS)


def train_and_test(apply_fn, params, ds, config: hamjax.TrainConfig) -> dict:
    started = time.perf_counter()
    result = hamjax.fit(apply_fn, params, ds, config, progress=False)
    return {
        "seed": config.seed,
        "test_accuracy": hamjax.train.evaluate(apply_fn, result.params, ds.test)["accuracy"],
        "val_accuracy": max(h["val_accuracy"] for h in result.history),
        "best_step": result.best_step,
        "steps_run": result.history[-1]["step"],
        "train_s": round(time.perf_counter() - started, 2),
    }


def train_reference(ds, seed: int, **recipe) -> dict:
    cnn = models.config_of(models.build("cnn"))
    apply_fn, params = hamjax.functional(models.from_config(cnn, seed=seed))
    return train_and_test(apply_fn, params, ds, reference_config(seed, **recipe))


def train_winner(ds, values: dict, seed: int) -> dict:
    supernet_params = nas.init(SUPERNET, jax.random.key(seed))
    apply_fn, params = nas.materialise(SUPERNET, supernet_params, values)
    if measure.param_count(params) != nas.param_count(SUPERNET, values):
        raise RuntimeError("materialise and param_count disagree")
    return train_and_test(apply_fn, params, ds, winner_config(seed))


def max_params(config: nas.SupernetConfig) -> int:
    """Parameters of the largest architecture of the space: each layer's largest (op, width), all layers active.

    Exact because :func:`nas.param_count` adds up independent per-layer terms.
    """
    values = nas.space(config).decode(nas.space(config).sample(jax.random.key(0), 1), 0)
    values["depth"] = config.max_layers
    for i in range(config.max_layers):
        best = max(
            ((op, w) for op in config.ops for w in config.widths),
            key=lambda ow, i=i: nas.param_count(config, values | {"depth": i + 1, f"op{i}": ow[0], f"width{i}": ow[1]}),
        )
        values[f"op{i}"], values[f"width{i}"] = best
    return nas.param_count(config, values)


def pick_winner(history, cap: float) -> engine.Candidate:
    """Highest validation accuracy among candidates of at most ``cap`` parameters (fewer params, then earlier)."""
    eligible = [(i, c) for i, c in enumerate(history) if c.params <= cap and np.isfinite(c.accuracy)]
    if not eligible:
        raise RuntimeError(f"no candidate has at most {cap:.0f} parameters")
    return max(eligible, key=lambda ic: (ic[1].accuracy, -ic[1].params, -ic[0]))[1]


def search(ds, args) -> tuple[engine.SearchResult, dict]:
    config = engine.SearchConfig(
        method="evolution",
        generations=GENERATIONS,
        population_size=POPULATION,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=LEARNING_RATE,
        eval_rows=args.eval_rows,
        execution="sequential",
        seed=args.seed,
    )
    times, best = [], []
    last = [time.perf_counter()]

    def on_generation(generation, new):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        top = max(new, key=lambda c: c.accuracy)
        best.append(max([top.accuracy, *best]))
        log(
            f"generation {generation + 1:2d}/{GENERATIONS}: {times[-1]:6.1f} s, best of generation "
            f"{top.accuracy:.3f} ({top.description}, {top.params:,} params), best so far {best[-1]:.3f}"
        )

    started = time.perf_counter()
    result = engine.run(SUPERNET, ds, config, progress=False, on_generation=on_generation)
    wall = time.perf_counter() - started
    stats = {
        "config": {k: getattr(config, k) for k in ("method", "generations", "population_size", "steps")}
        | {
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "eval_rows": config.eval_rows,
            "sample_size": config.sample_size,
            "mutation_rate": config.mutation_rate,
            "execution": config.execution,
            "seed": config.seed,
        },
        "supernet": repr(SUPERNET),
        "wall_s": round(wall, 2),
        "generation_s": [round(t, 2) for t in times],
        "generation_s_median": round(statistics.median(times), 2),
        "generation_s_after_first_median": round(statistics.median(times[1:]), 2) if len(times) > 1 else None,
        "outside_generations_s": round(wall - sum(times), 2),  # setup, and timing the Pareto front
        "best_val_accuracy_by_generation": [round(b, 4) for b in best],
    }
    return result, stats


def summary(rows: list[dict]) -> dict:
    values = [r["test_accuracy"] for r in rows]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values, "runs": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one retraining seed, shorter proxy (< 10 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps, args.batch, args.eval_rows = (80, 8, 500) if args.quick else (240, 8, 500)
    seeds = [args.seed] if args.quick else [args.seed, args.seed + 1, args.seed + 2]
    started = time.perf_counter()
    ds = hamjax.data.load("mnist")

    log("reference CNN ...")
    reference = [train_reference(ds, s) for s in seeds]
    reference_params = models.param_count(models.config_of(models.build("cnn")))
    cap = PARAM_CAP * reference_params
    log(f"reference CNN: {reference_params:,} params, test accuracy {[r['test_accuracy'] for r in reference]}")

    log(f"search: {GENERATIONS} generations of {POPULATION}, {args.steps} steps at batch {args.batch} each ...")
    result, search_stats = search(ds, args)
    winner = pick_winner(result.history, cap)
    log(f"winner (val {winner.accuracy:.3f}, {winner.params:,} params): {winner.description}; retraining ...")
    retrained = [train_winner(ds, winner.genome, s) for s in seeds]
    control = [train_reference(ds, s, learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS) for s in seeds]

    ref, win, ctl = summary(reference), summary(retrained), summary(control)
    gap_points = 100 * (ref["mean"] - win["mean"])
    ratio = winner.params / reference_params
    eligible = sum(c.params <= cap for c in result.history)
    results = [
        {"name": "reference", "model": "cnn", "params": reference_params, "recipe": "distill.py", **ref},
        {
            "name": "reference_same_recipe",
            "model": "cnn",
            "params": reference_params,
            "recipe": f"lr {LEARNING_RATE}, warmup {WARMUP_STEPS}, cosine",
            **ctl,
        },
        {
            "name": "winner",
            "description": winner.description,
            "genome": winner.genome,
            "generation": winner.generation,
            "params": winner.params,
            "search_val_accuracy": winner.accuracy,
            "recipe": f"lr {LEARNING_RATE}, warmup {WARMUP_STEPS}, cosine",
            **win,
            "gap_vs_same_recipe_points": round(100 * (ctl["mean"] - win["mean"]), 3),
        },
        {
            "name": "search",
            **search_stats,
            "candidates": len(result.history),
            "distinct_architectures": len({json.dumps(c.genome, sort_keys=True) for c in result.history}),
            "candidates_within_cap": eligible,
            "param_cap": cap,
            "max_params_in_space": max_params(SUPERNET),
            "engine_best": {k: result.best.to_dict()[k] for k in ("description", "accuracy", "params", "generation")},
            "pareto": [
                {k: c.to_dict()[k] for k in ("description", "accuracy", "params", "latency_ms", "generation")}
                for c in result.pareto
            ],
        },
    ]
    total = time.perf_counter() - started
    results.append({"name": "wall", "total_s": round(total, 1)})
    for r in results:
        print(json.dumps(r), flush=True)
    targets = [
        {
            "name": "accuracy gap, reference CNN - NAS winner (test, points)",
            "measured": round(gap_points, 3),
            "goal": "<= 0.5",
            "met": bool(gap_points <= 0.5),
        },
        {
            "name": "parameters, NAS winner / reference CNN",
            "measured": round(ratio, 4),
            "goal": "<= 0.5",
            "met": bool(ratio <= 0.5),
        },
    ]
    print(json.dumps({"bench": "nas", "env": measure.environment(), "results": results, "targets": targets}))


if __name__ == "__main__":
    main()
