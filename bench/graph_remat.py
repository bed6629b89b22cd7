"""Rematerialisation benchmark: the ViT training step's memory and time with and without remat.

Run: ``python bench/graph_remat.py --quick`` (5 timing rounds) or
``python bench/graph_remat.py`` (11 rounds). The last line printed is one
JSON object: ``{"bench": "graph_remat", "env", "results", "targets"}``.

The reference ViT (``hamjax.models.build("vit", input_shape=(28, 28, 1))``)
trains with Adam on batches of 256 MNIST images, one jitted step
(:func:`hamjax.train.make_train_step`, its state donated) per remat policy
(``TrainConfig(remat=...)``: ``none``, ``full``, ``dots``):

* memory: what XLA plans for the compiled step
  (:func:`hamjax.measure.compiled_memory`, ``memory_analysis()``): temp
  bytes (the activations kept for the backward pass and the step's
  scratch), and the total with arguments and outputs (less the donated
  state the outputs reuse);
* time: per-step milliseconds. The machine is shared and noisy, so the
  policies are interleaved: each round runs a burst of steps of every
  policy (order rotating from round to round), a burst's figure is its
  median step, and a policy's figure the median over rounds.

Targets (``full`` against ``none``): temp memory <= 0.6x, step time <= 1.4x.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import optax
from timing import finish, interleaved_steps

from hamjax import data, measure, models
from hamjax._base import functional, trainable
from hamjax.train import TrainState, make_train_step

POLICIES = ("none", "full", "dots")
BATCH = 256


def _state(apply_fn, params, optimizer) -> TrainState:
    params = jax.tree.map(jnp.array, params)
    return TrainState(params, optimizer.init(trainable(apply_fn, params)), jnp.asarray(0, jnp.int32))


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Compile and time the ViT training step under each policy; return (results, targets)."""
    rounds, burst = (5, 5) if quick else (11, 10)
    ds = data.load("mnist", seed=0)
    x, y = ds.train.x[:BATCH], ds.train.y[:BATCH]
    apply_fn, params = functional(models.build("vit", input_shape=(28, 28, 1), seed=0))
    optimizer = optax.adam(1e-3)
    steps, states, memory, losses = {}, {}, {}, {}
    for policy in POLICIES:
        steps[policy] = make_train_step(apply_fn, optimizer, remat=policy)
        states[policy] = _state(apply_fn, params, optimizer)
        memory[policy] = measure.compiled_memory(steps[policy], states[policy], x, y)
        states[policy], metrics = steps[policy](states[policy], x, y)  # warm-up: compiles
        losses[policy] = float(metrics["loss"])
    step_ms, _ = interleaved_steps(steps, states, x, y, rounds, burst)
    results = []
    for policy in POLICIES:
        m = memory[policy]
        results.append(
            {
                "model": "vit",
                "batch": BATCH,
                "remat": policy,
                "temp_bytes": None if m is None else m.temp_bytes,
                "total_bytes": None if m is None else m.total_bytes,
                "step_ms": round(step_ms[policy], 2),
                "first_loss": losses[policy],
            }
        )
    targets = []
    if memory["none"] is not None and memory["full"] is not None:
        ratio = memory["full"].temp_bytes / memory["none"].temp_bytes
        targets.append(
            {
                "name": "remat full: ViT train-step temp memory vs none (batch 256)",
                "measured": round(ratio, 3),
                "goal": "<= 0.6",
                "met": bool(ratio <= 0.6),
            }
        )
    slowdown = step_ms["full"] / step_ms["none"]
    targets.append(
        {
            "name": "remat full: ViT train-step time vs none (batch 256)",
            "measured": round(slowdown, 3),
            "goal": "<= 1.4",
            "met": bool(slowdown <= 1.4),
        }
    )
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 timing rounds")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    for row in results:
        temp = "-" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 1e6:.1f} MB"
        print(f"remat {row['remat']:5s} temp {temp:>10s} step {row['step_ms']:.1f} ms")
    return finish("graph_remat", results, targets)


if __name__ == "__main__":
    sys.exit(main())
