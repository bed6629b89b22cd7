"""Part ``compare`` of bench/tune.py: Optuna studies of the digits MLP, sequential against :mod:`hamjax.tune` batches.

The task: a plain ``jnp`` MLP 64-128-10 (relu; params a dict, init scaled
normal) on :func:`hamjax.data.load` ``("digits", seed=0, val_fraction=0.3,
test_fraction=0.1)`` (1,078 training and 539 validation images: with the
default 180 validation images the best of 64 trials scores 100% in most
studies, and the accuracy comparison would say nothing), AdamW at a
constant learning rate, batch 64 (16 steps an epoch, the last partial batch
dropped), ``EPOCHS`` epochs; a trial's value is its validation accuracy
after the last epoch. Search space:
``learning_rate`` log-uniform in [1e-4, 1e-1], ``weight_decay`` log-uniform
in [1e-6, 1e-2], ``label_smoothing`` uniform in [0, 0.2]. Every study
maximises, with TPE seeded by the bench seed.

Arms, each run end to end (compiles, sampling and Optuna's bookkeeping
included) on the same seeds and trial budget:

* ``idiomatic``: what the Optuna examples do with JAX: ``study.optimize``
  whose objective calls :func:`hamjax.train.fit` with the hyperparameters as
  Python floats (``TrainConfig(optimizer="adamw", learning_rate=...,
  weight_decay=..., label_smoothing=...)``), so every trial compiles its own
  train and eval steps; one validation, at the end;
* ``careful``: one train step compiled before the study
  (``optax.inject_hyperparams(optax.adamw)``, the hyperparameters passed as
  float32 arrays), the Python loop calling it once a step; one trial at a
  time through ``study.optimize``; the same batches in the same order as
  ``idiomatic`` (:func:`hamjax.data.batch_indices` with the bench seed), so
  the two arms compute the same trials up to float rounding;
* ``hamjax``: :func:`hamjax.tune.run` in batches of ``BATCH_TRIALS``, TPE
  with the constant-liar strategy, its defaults otherwise (the execution
  ``"vmap"``), no pruner; a batch's members train their ``EPOCHS`` epochs
  in one compiled call (:meth:`hamjax.search.population.Population.train_epochs`),
  scored on the validation split after each epoch inside it, and report
  every epoch's value (the pruners' rungs);
* ``hamjax_auto`` and ``hamjax_recorded`` (figures, not targets): the same
  call with ``execution="auto"`` (the first round compiles and times vmap,
  chunked and sequential and keeps the fastest), then with the execution it
  chose given, as a resumed study reuses its recorded choice.

Every study pays its own compiles, as it would in a process of its own:
``careful`` builds its jitted step inside the study, and each ``hamjax``
call passes a new model object (``functools.partial(apply_mlp)``), since
:func:`hamjax.tune.run` keeps a model's compiled trainer for the process
and a second study of the same ``apply_fn`` would compile nothing. What
does not depend on the model is compiled once per process in both arms
(``careful``'s eager optimizer inits, ``hamjax``'s jitted member inits,
stacks and slot scatters), so the first study of each arm pays it.

Every trial starts from params drawn with ``key(seed)`` folded with the
trial number. Seeds and trials: 5 seeds of 128 trials; ``--quick``: 2 seeds
of 64 trials (the figures say which).

Targets, from the means over seeds: ``idiomatic`` seconds / ``hamjax``
seconds >= 10; ``careful`` / ``hamjax`` >= 1.2; ``hamjax``'s best
validation accuracy >= each sequential arm's minus 0.3 points.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import data as data_lib
from hamjax._losses import cross_entropy
from hamjax.train import TrainConfig, fit

SIZES = (64, 128, 10)
EPOCHS = 10
BATCH = 64
BATCH_TRIALS = 32
SPACE = {
    "learning_rate": (1e-4, 1e-1, True),
    "weight_decay": (1e-6, 1e-2, True),
    "label_smoothing": (0.0, 0.2, False),
}
DATA = {"seed": 0, "val_fraction": 0.3, "test_fraction": 0.1}
FULL = {"seeds": 5, "trials": 128}
QUICK = {"seeds": 2, "trials": 64}
SPEEDUP_IDIOMATIC, SPEEDUP_CAREFUL, ACCURACY_POINTS = 10.0, 1.2, 0.3


def load():
    """The digits split of every arm (:data:`DATA`)."""
    return data_lib.load("digits", **DATA)


def init_mlp(key) -> dict:
    """Params of the 64-128-10 MLP: ``w{i}`` scaled normal (fan-in), ``b{i}`` zeros."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(SIZES)):
        key, sub = jax.random.split(key)
        params[f"w{i}"] = jax.random.normal(sub, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in)
        params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    return params


def apply_mlp(params: dict, x):
    """Logits of the MLP for images ``(N, 8, 8, 1)``."""
    h = x.reshape(x.shape[0], -1)
    layers = len(SIZES) - 1
    for i in range(layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < layers - 1:
            h = jax.nn.relu(h)
    return h


_init = jax.jit(init_mlp)


def trial_params(seed: int, number: int) -> dict:
    """The starting params of trial ``number`` of the study seeded ``seed``."""
    return _init(jax.random.fold_in(jax.random.key(seed), number))


def suggest(trial) -> dict:
    """The trial's hyperparameters from :data:`SPACE` (Optuna's define-by-run API)."""
    return {name: trial.suggest_float(name, low, high, log=log) for name, (low, high, log) in SPACE.items()}


def _sampler(seed: int, *, constant_liar: bool = False):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, constant_liar=constant_liar)


def _study(seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=_sampler(seed))


def idiomatic(ds, seed: int, trials: int) -> dict:
    """Sequential Optuna, each trial a :func:`hamjax.train.fit` with float hyperparameters (recompiles per trial)."""
    steps = data_lib.steps_per_epoch(len(ds.train.y), BATCH) * EPOCHS

    def objective(trial):
        hp = suggest(trial)
        config = TrainConfig(
            epochs=EPOCHS,
            batch_size=BATCH,
            optimizer="adamw",
            eval_every=steps,
            seed=seed,
            checkpoint_seconds=0.0,
            **hp,
        )
        result = fit(apply_mlp, trial_params(seed, trial.number), ds, config, progress=False)
        return float(result.history[-1]["val_accuracy"])

    started = time.perf_counter()
    study = _study(seed)
    study.optimize(objective, n_trials=trials)
    return {"seconds": time.perf_counter() - started, "best": study.best_value, "best_params": study.best_params}


def careful(ds, seed: int, trials: int) -> dict:
    """Sequential Optuna over one train step compiled before the study, hyperparameters injected as arrays."""
    started = time.perf_counter()
    optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
    classes = SIZES[-1]

    def step(params, opt_state, hp, x, y):
        def loss(p):
            targets = optax.smooth_labels(jax.nn.one_hot(y, classes), hp["label_smoothing"])
            return cross_entropy(apply_mlp(p, x), targets)

        grads = jax.grad(loss)(params)
        opt_state.hyperparams["learning_rate"] = hp["learning_rate"]
        opt_state.hyperparams["weight_decay"] = hp["weight_decay"]
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    train_step = jax.jit(step, donate_argnums=(0, 1))
    accuracy = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(apply_mlp(p, x), -1) == y))
    n = len(ds.train.y)
    total = data_lib.steps_per_epoch(n, BATCH) * EPOCHS
    order = [data_lib.batch_indices(n, BATCH, t, seed=seed) for t in range(total)]
    xs, ys = ds.train.x[np.stack(order)], ds.train.y[np.stack(order)]
    val_x, val_y = jnp.asarray(ds.val.x), jnp.asarray(ds.val.y)

    def objective(trial):
        hp = {k: jnp.asarray(v, jnp.float32) for k, v in suggest(trial).items()}
        params = trial_params(seed, trial.number)
        opt_state = optimizer.init(params)
        for t in range(total):
            params, opt_state = train_step(params, opt_state, hp, xs[t], ys[t])
        return float(accuracy(params, val_x, val_y))

    study = _study(seed)
    study.optimize(objective, n_trials=trials)
    return {"seconds": time.perf_counter() - started, "best": study.best_value, "best_params": study.best_params}


def tune_space() -> dict:
    """:data:`SPACE` as a :class:`hamjax.tune.Space` table, the batch size fixed at :data:`BATCH`."""
    table = {name: {"low": low, "high": high, "log": log} for name, (low, high, log) in SPACE.items()}
    return {**table, "batch_size": BATCH}


def batched(
    ds, seed: int, trials: int, *, pruner: str | None = None, execution: str | None = None, batch: int = BATCH_TRIALS
) -> dict:
    """:func:`hamjax.tune.run` in batches of ``batch`` (TPE with the constant liar), its defaults otherwise.

    ``execution=None`` leaves :func:`hamjax.tune.run`'s default (the study's record, else ``"vmap"``).
    """
    import optuna

    from hamjax import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    result = tune.run(
        functools.partial(apply_mlp),  # a new model object: this study compiles as a new process would
        _init,
        ds,
        tune_space(),
        trials=trials,
        batch=batch,
        sampler="tpe",
        pruner=pruner,
        epochs=EPOCHS,
        seed=seed,
        progress=False,
        **({} if execution is None else {"execution": execution}),
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "best": result.study.best_value,
        "best_params": result.study.best_params,
        "member_epochs": result.member_epochs,
        "execution": result.execution,
        "trials_run": result.trials_run,
    }


def tune_available() -> bool:
    """Whether :mod:`hamjax.tune` exists in this checkout."""
    return importlib.util.find_spec("hamjax.tune") is not None


ARMS = {"idiomatic": idiomatic, "careful": careful}


def _row(name: str, seed: int, trials: int, out: dict) -> dict:
    row = {"arm": name, "seed": seed, "trials": trials, "seconds": round(out["seconds"], 2)}
    row.update(best_val_accuracy=round(out["best"], 4), best_params=out["best_params"])
    row.update({k: out[k] for k in ("member_epochs", "execution") if k in out})
    print(f"tune/compare: seed {seed} {name}: {out['seconds']:.1f} s, best val accuracy {out['best']:.4f}")
    return row


def run(quick: bool) -> tuple[list, list]:
    budget = QUICK if quick else FULL
    ds = load()
    arms = dict(ARMS)
    if tune_available():
        arms["hamjax"] = batched
    results, per_arm = [], {name: [] for name in arms}
    if "hamjax" in arms:
        per_arm["hamjax_auto"], per_arm["hamjax_recorded"] = [], []
    for seed in range(budget["seeds"]):
        names = list(arms)
        names = names[seed % len(names) :] + names[: seed % len(names)]  # the order rotates from seed to seed
        for name in names:
            out = arms[name](ds, seed, budget["trials"])
            per_arm[name].append(out)
            results.append(_row(name, seed, budget["trials"], out))
            if name == "hamjax":  # figures: execution "auto", then the execution it chose given
                auto = batched(ds, seed, budget["trials"], execution="auto")
                per_arm["hamjax_auto"].append(auto)
                results.append(_row("hamjax_auto", seed, budget["trials"], auto))
                again = batched(ds, seed, budget["trials"], execution=auto["execution"])
                per_arm["hamjax_recorded"].append(again)
                results.append(_row("hamjax_recorded", seed, budget["trials"], again))
    means = {
        name: {
            "seconds": statistics.mean(o["seconds"] for o in outs),
            "best_val_accuracy": statistics.mean(o["best"] for o in outs),
        }
        for name, outs in per_arm.items()
    }
    results.append({"means": {k: {m: round(v, 4) for m, v in d.items()} for k, d in means.items()}, **budget})
    return results, targets(means, budget)


def targets(means: dict, budget: dict) -> list:
    """The three targets from the means over seeds; the ``hamjax`` ones unmet, with a note, while it is absent."""
    scope = f"{budget['trials']} trials x {budget['seeds']} seeds"
    names = {
        "idiomatic": f"hamjax.tune end-to-end speed-up over idiomatic sequential Optuna+JAX ({scope})",
        "careful": f"hamjax.tune end-to-end speed-up over careful sequential Optuna+JAX ({scope})",
    }
    goals = {"idiomatic": SPEEDUP_IDIOMATIC, "careful": SPEEDUP_CAREFUL}
    accuracy_name = f"hamjax.tune best val accuracy minus the best sequential arm's, points ({scope})"
    if "hamjax" not in means:
        note = "hamjax.tune is not built yet: nothing measured"
        out = [
            {"name": names[k], "measured": "absent", "goal": f">= {goals[k]}", "met": False, "note": note}
            for k in goals
        ]
        out.append(
            {"name": accuracy_name, "measured": "absent", "goal": f">= -{ACCURACY_POINTS}", "met": False, "note": note}
        )
        return out
    hamjax_arm = means["hamjax"]
    out = []
    for k, goal in goals.items():
        ratio = means[k]["seconds"] / hamjax_arm["seconds"]
        out.append({"name": names[k], "measured": round(ratio, 2), "goal": f">= {goal}", "met": ratio >= goal})
    gap = 100 * (hamjax_arm["best_val_accuracy"] - max(means[k]["best_val_accuracy"] for k in goals))
    out.append(
        {
            "name": accuracy_name,
            "measured": round(gap, 2),
            "goal": f">= -{ACCURACY_POINTS}",
            "met": gap >= -ACCURACY_POINTS,
        }
    )
    return out


def main(argv=None) -> int:
    import argparse

    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['seeds']} seeds of {QUICK['trials']} trials")
    args = parser.parse_args(argv)
    results, goals = run(args.quick)
    return finish("tune_compare", results, goals)


if __name__ == "__main__":
    raise SystemExit(main())
