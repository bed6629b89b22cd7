"""Augmentation overhead: a jitted CNN training step that augments its batch, against the plain step.

Run: ``python bench/train_augment.py --quick`` (5 timing rounds) or
``python bench/train_augment.py`` (11 rounds). The last line printed is one
JSON object: ``{"bench": "train_augment", "env", "results", "targets"}``.

The reference CNN (``hamjax.models.build("cnn", input_shape=(28, 28, 1),
num_classes=10)`` through :func:`hamjax.functional`) trains with Adam on a
batch of 128 images of the MNIST subset. Each variant is one jitted
:func:`hamjax.train.make_train_step` whose :class:`hamjax.train.Objective`
augments ``x`` with a key split from the step's key before calling the
model, so the augmentation runs inside the compiled step:

* ``plain``: no augmentation;
* ``spec``: ``hamjax.augment.parse("shift=2,rotate=10,scale=0.1,cutout=8")``
  (shift, rotation and zoom compose into one warp, then cutout);
* ``randaugment``: ``hamjax.augment.randaugment(key, x, 0.5)`` (two
  operations per example).

The machine is shared and noisy, so the variants are interleaved: each round
times a burst of steps of every variant (order rotating from round to
round), a burst's figure is its median step, and a variant's figure is the
median over rounds. Target (issue 17): an augmented step <= 1.3x the plain
step, for each augmentation.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import optax
from timing import finish, step_timings

from hamjax import augment, data, models
from hamjax._base import call_model, functional
from hamjax.distill import cross_entropy
from hamjax.train import Objective

BATCH = 128
SPEC = "shift=2,rotate=10,scale=0.1,cutout=8"
MAGNITUDE = 0.5
GOAL = 1.3


def augmented(augmentation) -> Objective:
    """The supervised objective on ``augmentation(key, x)``, or on ``x`` when ``augmentation`` is None."""

    def loss(apply_fn, params, x, y, *, rng, frozen, batch, opt_state):
        del frozen, batch, opt_state
        if augmentation is not None:
            augment_key, rng = jax.random.split(rng)
            x = augmentation(augment_key, x)
        logits, new_params = call_model(apply_fn, params, x, train=True, rng=rng)
        return cross_entropy(logits, y), (logits, new_params, {})

    return Objective(loss)


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Time the plain and the augmented CNN training steps; return (results, targets)."""
    rounds, burst = (5, 10) if quick else (11, 20)
    ds = data.load("mnist", seed=0)
    x, y = jnp.asarray(ds.train.x[:BATCH]), jnp.asarray(ds.train.y[:BATCH])
    apply_fn, params = functional(models.build("cnn", input_shape=(28, 28, 1), num_classes=10, seed=0))
    optimizer = optax.adam(1e-3)
    variants = {
        "plain": None,
        "spec": augment.parse(SPEC),
        "randaugment": lambda key, images: augment.randaugment(key, images, MAGNITUDE),
    }
    step_ms, losses, per_round = step_timings(
        {name: (optimizer, augmented(a)) for name, a in variants.items()}, apply_fn, params, x, y, rounds, burst
    )
    results = [
        {
            "model": "cnn",
            "batch": BATCH,
            "augmentation": {"plain": "none", "spec": SPEC, "randaugment": f"randaugment={MAGNITUDE}"}[name],
            "step_ms": round(step_ms[name], 3),
            "ratio_to_plain": round(step_ms[name] / step_ms["plain"], 3),
            "round_step_ms": [round(t, 3) for t in per_round[name]],
            "loss_after_warmup": losses[name],
        }
        for name in step_ms
    ]
    targets = []
    for name in ("spec", "randaugment"):
        ratio = step_ms[name] / step_ms["plain"]
        label = SPEC if name == "spec" else f"randaugment magnitude {MAGNITUDE}"
        targets.append(
            {
                "name": f"augmentation ({label}): CNN train-step time vs plain (batch {BATCH})",
                "measured": round(ratio, 3),
                "goal": f"<= {GOAL}",
                "met": bool(ratio <= GOAL),
            }
        )
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 timing rounds")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    for row in results:
        print(f"{row['augmentation']:40s} step {row['step_ms']:.2f} ms ({row['ratio_to_plain']:.3f}x plain)")
    return finish("train_augment", results, targets)


if __name__ == "__main__":
    sys.exit(main())
