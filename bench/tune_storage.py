"""Part ``storage`` of bench/tune.py: the bookkeeping of a batch of trials (ask + tell + storage) after 1,000 trials.

A study on SQLite (``hamjax.tune.storage.open_storage``: WAL journal, a
heartbeat) and one on the journal file each hold 1,000 finished trials of a
3-parameter space (learning rate and weight decay on log scales, label
smoothing). Then, with the sampler hamjax.tune uses (TPE, multivariate, the
constant liar) and with random sampling:

* ``plain``: Optuna's own loop, ``study.ask(distributions)`` then
  ``study.tell`` one trial at a time, ``BATCH`` trials;
* ``batched``: :func:`hamjax.tune.bookkeeping.ask_batch` of ``BATCH`` trials
  and :func:`hamjax.tune.bookkeeping.tell_batch`, ``REPEATS`` batches (the
  median is reported);
* ``sampler``: the same ``BATCH`` asks on an in-memory study holding the same
  1,000 trials: what the sampler itself costs, whatever the storage.

Milliseconds per trial; the machine's load average is recorded beside them
(the developers' machines are shared). Targets: batched ask + tell <= 10 ms
per trial on SQLite and on the journal file with each sampler.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
import warnings

BATCH, FILLED, REPEATS = 64, 1000, 3
GOAL_MS = 10.0


def _space():
    from optuna.distributions import FloatDistribution

    return {
        "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
        "label_smoothing": FloatDistribution(0.0, 0.2),
    }


def _value(params: dict) -> float:
    return (params["learning_rate"] - 0.01) ** 2 + params["weight_decay"] + params["label_smoothing"]


def _filled(seed: int) -> list:
    import optuna

    rng, space, trials = random.Random(seed), _space(), []
    for _ in range(FILLED):
        params = {
            name: d.low * (d.high / d.low) ** rng.random() if d.log else d.low + (d.high - d.low) * rng.random()
            for name, d in space.items()
        }
        trials.append(optuna.create_trial(params=params, distributions=space, value=_value(params)))
    return trials


def _sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def _study(url, sampler: str, seed: int, filled: list):
    from hamjax.tune.storage import create_or_load_study, open_storage

    study = create_or_load_study(open_storage(url), "bench", ["minimize"], sampler=_sampler(sampler, seed))
    study.add_trials(filled)
    return study


def _plain_ms(study) -> float:
    space = _space()
    started = time.perf_counter()
    trials = [study.ask(space) for _ in range(BATCH)]
    for trial in trials:
        study.tell(trial, _value(trial.params))
    return (time.perf_counter() - started) / BATCH * 1e3


def _batched_ms(study) -> tuple[float, float]:
    from hamjax.tune.bookkeeping import ask_batch, tell_batch

    space = _space()
    started = time.perf_counter()
    trials = ask_batch(study, BATCH, space)
    asked = time.perf_counter()
    tell_batch(study, trials, [_value(t.params) for t in trials])
    told = time.perf_counter()
    return (asked - started) / BATCH * 1e3, (told - asked) / BATCH * 1e3


def run(quick: bool) -> tuple[list, list]:
    import optuna

    del quick  # one size: 1,000 trials and batches of 64 are the issue's
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    filled = _filled(0)
    results, targets = [], []
    with tempfile.TemporaryDirectory() as folder:
        for sampler in ("tpe", "random"):
            alone = _study(None, sampler, 0, filled)
            started = time.perf_counter()
            for _ in range(BATCH):
                alone.ask(_space())
            sampler_ms = (time.perf_counter() - started) / BATCH * 1e3
            for kind in ("sqlite", "journal"):
                path = os.path.join(folder, f"{sampler}-{kind}")
                url = f"sqlite:///{path}.db" if kind == "sqlite" else f"journal:///{path}.log"
                plain_url = f"sqlite:///{path}-plain.db" if kind == "sqlite" else f"journal:///{path}-plain.log"
                plain = _plain_ms(_study(plain_url, sampler, 0, filled))
                study = _study(url, sampler, 0, filled)
                runs = [_batched_ms(study) for _ in range(REPEATS)]
                ask_ms = statistics.median(a for a, _ in runs)
                tell_ms = statistics.median(t for _, t in runs)
                total = statistics.median(a + t for a, t in runs)
                row = {
                    "storage": kind,
                    "sampler": sampler,
                    "trials_before": FILLED,
                    "batch": BATCH,
                    "plain_ms_per_trial": round(plain, 2),
                    "batched_ask_ms_per_trial": round(ask_ms, 2),
                    "batched_tell_ms_per_trial": round(tell_ms, 2),
                    "batched_ms_per_trial": round(total, 2),
                    "sampler_alone_ms_per_trial": round(sampler_ms, 2),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                }
                results.append(row)
                print(
                    f"tune/storage: {kind} {sampler}: plain {plain:.1f} ms/trial, batched {total:.1f} "
                    f"(ask {ask_ms:.1f} + tell {tell_ms:.1f}), sampler alone {sampler_ms:.1f}, "
                    f"load {row['load_average_1min']}"
                )
                targets.append(
                    {
                        "name": f"bookkeeping (ask + tell + storage) ms per trial, {kind}, {sampler}, batch {BATCH} "
                        f"after {FILLED} trials",
                        "measured": round(total, 2),
                        "goal": f"<= {GOAL_MS}",
                        "met": total <= GOAL_MS,
                        "note": f"plain Optuna ask/tell here: {plain:.1f} ms; the sampler alone: {sampler_ms:.1f} ms",
                    }
                )
    return results, targets


def main(argv=None) -> int:
    import argparse

    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same run (one size)")
    args = parser.parse_args(argv)
    results, goals = run(args.quick)
    return finish("tune_storage", results, goals)


if __name__ == "__main__":
    raise SystemExit(main())
