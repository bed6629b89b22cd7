"""Gradient accumulation: k = 4 micro-batches against one 4x batch, and the cost of an accumulation step.

Run: ``python bench/train_accumulate.py --quick`` (5 timing rounds) or
``python bench/train_accumulate.py`` (11 rounds). The last line printed is
one JSON object: ``{"bench": "train_accumulate", "env", "results", "targets"}``.

Equality. The reference MLP (``hamjax.models.build("mlp", input_shape=(28,
28, 1), num_classes=10)``, no dropout, no batch statistics) takes 10
updates of SGD with momentum 0.9 from the same params twice: once on batches of 256 MNIST images, once
with ``TrainConfig(accumulate=4)`` (``optax.MultiSteps`` through
:func:`hamjax.train.configure_optimizer`) on 40 micro-batches of 64, the
same rows in the same order. The figure is the largest relative difference
of a params leaf, ``max |a - b| / max |b|``. Target: <= 1e-5. The same
figure with Adam is reported beside it, not targeted: Adam divides by
``sqrt(v) + 1e-8``, so for weights whose gradient is near zero a float32
rounding difference between one mean over 256 rows and the mean of four
means over 64 becomes a difference in the update itself (about 1.7e-5 here;
1.8e-6 with ``eps=1e-6``), which is Adam's conditioning, not accumulation.

Overhead. One jitted :func:`hamjax.train.make_train_step` of the reference
CNN (``build("cnn", input_shape=(28, 28, 1), num_classes=10)``, the model of
the other step-overhead figures of ``bench/train.py``) on a batch of 128 with
plain Adam, against the same step with Adam inside ``MultiSteps`` (k = 4),
timed as interleaved bursts of steps (medians over rounds). Target: the
accumulation step <= 1.15x the plain step.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from timing import finish, step_timings

import hamjax
from hamjax._base import trainable
from hamjax.train import TrainConfig, TrainState, configure_optimizer, make_train_step

K, MICRO, UPDATES = 4, 64, 10  # 10 updates of 256 fit in the 3,500 training images


def _model(name: str = "mlp"):
    return hamjax.functional(hamjax.models.build(name, input_shape=(28, 28, 1), num_classes=10, seed=0))


def _state(optimizer, apply_fn, params) -> TrainState:
    params = jax.tree.map(jnp.array, params)
    return TrainState(params, optimizer.init(trainable(apply_fn, params)), jnp.asarray(0, jnp.int32))


def equality(ds, make_optimizer) -> float:
    """Largest relative params difference after 10 updates: k micro-batches against one k-times batch."""
    apply_fn, params = _model()
    big_opt = configure_optimizer(make_optimizer(), TrainConfig())
    micro_opt = configure_optimizer(make_optimizer(), TrainConfig(accumulate=K))
    big_step, micro_step = make_train_step(apply_fn, big_opt), make_train_step(apply_fn, micro_opt)
    big, micro = _state(big_opt, apply_fn, params), _state(micro_opt, apply_fn, params)
    x, y = ds.train.x, ds.train.y
    for update in range(UPDATES):
        start = update * K * MICRO
        big, _ = big_step(big, x[start : start + K * MICRO], y[start : start + K * MICRO])
        for part in range(K):
            rows = slice(start + part * MICRO, start + (part + 1) * MICRO)
            micro, _ = micro_step(micro, x[rows], y[rows])
    return max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(micro.params), jax.tree.leaves(big.params), strict=True)
    )


def overhead(ds, rounds: int, burst: int = 20, batch: int = 128) -> dict:
    """Median step milliseconds of the plain and the accumulating CNN step, interleaved over rounds."""
    apply_fn, params = _model("cnn")
    x, y = jnp.asarray(ds.train.x[:batch]), jnp.asarray(ds.train.y[:batch])
    variants = {
        name: (configure_optimizer(optax.adam(1e-3), config), None)
        for name, config in (("plain", TrainConfig()), ("accumulate 4", TrainConfig(accumulate=K)))
    }
    return step_timings(variants, apply_fn, params, x, y, rounds, burst)[0]


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """The equality and overhead figures; ``(results, targets)``."""
    ds = hamjax.data.load("mnist")
    if len(ds.train.y) < UPDATES * K * MICRO:
        raise SystemExit(f"the MNIST subset has {len(ds.train.y)} training images, fewer than {UPDATES * K * MICRO}")
    difference = equality(ds, lambda: optax.sgd(1e-2, momentum=0.9))
    adam = equality(ds, lambda: optax.adam(1e-3))
    ms = overhead(ds, 5 if quick else 11)
    ratio = ms["accumulate 4"] / ms["plain"]
    results = [
        {
            "part": "equality",
            "optimizer": "sgd momentum 0.9",
            "updates": UPDATES,
            "k": K,
            "micro_batch": MICRO,
            "max_relative_difference": difference,
        },
        {
            "part": "equality",
            "optimizer": "adam (not targeted)",
            "updates": UPDATES,
            "k": K,
            "micro_batch": MICRO,
            "max_relative_difference": adam,
        },
        {
            "part": "overhead",
            "model": "cnn",
            "batch": 128,
            "step_ms": {k: round(v, 4) for k, v in ms.items()},
            "ratio": ratio,
        },
    ]
    targets = [
        {
            "name": f"accumulation: k={K} micro-batches vs one {K}x batch, max relative params difference after "
            f"{UPDATES} SGD-momentum updates",
            "measured": float(np.format_float_scientific(difference, 3)),
            "goal": "<= 1e-5",
            "met": bool(difference <= 1e-5),
        },
        {
            "name": "accumulation step / plain step (CNN, batch 128)",
            "measured": round(ratio, 3),
            "goal": "<= 1.15",
            "met": bool(ratio <= 1.15),
        },
    ]
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 timing rounds instead of 11")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    print(
        f"max relative difference: sgd {results[0]['max_relative_difference']:.2e}, "
        f"adam {results[1]['max_relative_difference']:.2e}; step ms {results[2]['step_ms']}"
    )
    return finish("train_accumulate", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
