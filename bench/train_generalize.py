"""Regularisation for accuracy: label smoothing, mixup and augmentation against plain training of the CNN.

Run: ``python bench/train_generalize.py [--quick]``: 15 epochs and three
seeds either way (12 runs of about 10 s each on 2 idle cores; at 6 epochs the
augmented runs had not converged, so a shorter variant would measure
underfitting, not regularisation).
The last line printed is one JSON object: ``{"bench": "train_generalize",
"env", "results", "targets"}``.

The reference CNN (``hamjax.models.build("cnn", input_shape=(28, 28, 1),
num_classes=10)``) trains on the MNIST subset (3,500 training images) with
:func:`hamjax.fit`, Adam, warm-up and cosine decay, batch 128, the same
epochs and seeds for every variant:

* ``plain``;
* ``label smoothing``: ``TrainConfig(label_smoothing=0.1)``;
* ``mixup``: ``TrainConfig(mixup=0.2)``;
* ``augment``: ``TrainConfig(augment="shift=2,rotate=10,scale=0.1")``.

``fit`` returns the params of the best validation accuracy. The target, as
issue 17 words it: the best of the three regularised variants by mean test
accuracy over the seeds improves on the plain run's mean test accuracy by
>= 0.3 points. Reported beside it, not targeted: the variant a user would
pick without the test split, the best mean validation accuracy (ties go to
the first in the list above; the validation split has 500 images, so ties
are common), and its test gain.
"""

from __future__ import annotations

import argparse
import statistics
import time

from timing import finish

import hamjax
from hamjax.train import TrainConfig, evaluate, fit

SEEDS = (0, 1, 2)
VARIANTS = {
    "plain": {},
    "label smoothing": {"label_smoothing": 0.1},
    "mixup": {"mixup": 0.2},
    "augment": {"augment": "shift=2,rotate=10,scale=0.1"},
}


def train_variant(ds, seed: int, epochs: int, fields: dict) -> dict:
    """One training run; its validation and test accuracy and seconds."""
    module = hamjax.models.build("cnn", input_shape=(28, 28, 1), num_classes=ds.num_classes, seed=seed)
    apply_fn, params = hamjax.functional(module)
    config = TrainConfig(
        epochs=epochs, batch_size=128, learning_rate=2e-3, warmup_steps=50, seed=seed, checkpoint_seconds=0, **fields
    )
    started = time.perf_counter()
    result = fit(apply_fn, params, ds, config, progress=False)
    return {
        "val_accuracy": max(h["val_accuracy"] for h in result.history),
        "test_accuracy": evaluate(apply_fn, result.params, ds.test)["accuracy"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Every variant on every seed, the chosen variant and its gain; ``(results, targets)``."""
    ds = hamjax.data.load("mnist")
    del quick  # the same run: see the module docstring
    epochs = 15
    results, per_variant = [], {name: [] for name in VARIANTS}
    for seed in SEEDS:
        for name, fields in VARIANTS.items():
            row = {"variant": name, "seed": seed, "epochs": epochs, **train_variant(ds, seed, epochs, fields)}
            print(f"  {name:<16} seed {seed}: val {row['val_accuracy']:.4f} test {row['test_accuracy']:.4f}")
            results.append(row)
            per_variant[name].append(row)
    means = {
        name: {k: statistics.mean(r[k] for r in rows) for k in ("val_accuracy", "test_accuracy")}
        for name, rows in per_variant.items()
    }
    regularised = [name for name in VARIANTS if name != "plain"]

    def gain_of(name: str) -> float:
        return 100 * (means[name]["test_accuracy"] - means["plain"]["test_accuracy"])

    best = max(regularised, key=gain_of)
    chosen = max(regularised, key=lambda name: means[name]["val_accuracy"])
    gain = gain_of(best)
    results.append(
        {
            "summary": means,
            "best_by_test": best,
            "gain_points": gain,
            "chosen_by_validation": chosen,
            "chosen_gain_points": gain_of(chosen),
        }
    )
    targets = [
        {
            "name": f"CNN test accuracy gain of the best of label smoothing / mixup / augmentation ({best}) over "
            f"plain training, points, mean of {len(SEEDS)} seeds",
            "measured": round(gain, 3),
            "goal": ">= 0.3",
            "met": bool(gain >= 0.3),
        }
    ]
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for the common interface; the same run")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    return finish("train_generalize", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
