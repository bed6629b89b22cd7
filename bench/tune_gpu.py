"""Part ``gpu`` of bench/tune.py: 4,096 trials of the digits MLP with :func:`hamjax.tune.run` on a GPU, end to end.

The task and space are part ``compare``'s (bench/tune_compare.py: the
64-128-10 MLP, learning rate, weight decay and label smoothing, ``EPOCHS``
epochs a trial, TPE with the constant liar), with ``TRIALS`` = 4,096 trials
in batches of ``BATCH_TRIALS`` = 1,024 members (``execution="vmap"``),
seed 0, no pruner. The seconds are end to end: study, compiles, every
epoch's training and validation, Optuna's asks and tells.

Target: under 60 s, with the device named. On a CPU backend (no GPU lent to
the run) nothing is measured and the target says so, unmet.
"""

from __future__ import annotations

import time

import jax
from tune_compare import batched, load, tune_available

TRIALS, BATCH_TRIALS, GOAL_S = 4096, 1024, 60.0


def measure(trials: int = TRIALS, batch: int = BATCH_TRIALS) -> dict:
    """One study of ``trials`` trials in batches of ``batch``: seconds, best accuracy, the device."""
    out = batched(load(), 0, trials, batch=batch, execution="vmap")
    device = jax.devices()[0]
    return {
        "trials": trials,
        "batch": batch,
        "seconds": round(out["seconds"], 2),
        "best_val_accuracy": round(out["best"], 4),
        "member_epochs": out["member_epochs"],
        "device": f"{device.platform}:{device.device_kind}",
    }


def run(quick: bool) -> tuple[list, list]:
    name = f"GPU: {TRIALS} trials of the digits MLP, hamjax.tune end to end, seconds"
    goal = f"< {GOAL_S:g}"
    if not tune_available():
        return [], [{"name": name, "measured": "absent", "goal": goal, "met": False, "note": "no hamjax.tune"}]
    if jax.default_backend() != "gpu":
        note = f"backend {jax.default_backend()}: no GPU lent to this run, nothing measured"
        return [], [{"name": name, "measured": "absent", "goal": goal, "met": False, "note": note}]
    started = time.perf_counter()
    row = measure()
    print(
        f"tune/gpu: {row['trials']} trials in {row['seconds']} s on {row['device']} ({time.perf_counter() - started:.1f} s)"
    )
    target = {"name": f"{name} ({row['device']})", "measured": row["seconds"], "goal": goal}
    return [row], [{**target, "met": row["seconds"] < GOAL_S}]


def main(argv=None) -> int:
    import argparse

    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same run (it has no shorter variant)")
    args = parser.parse_args(argv)
    results, goals = run(args.quick)
    return finish("tune_gpu", results, goals)


if __name__ == "__main__":
    raise SystemExit(main())
