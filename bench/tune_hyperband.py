"""Part ``hyperband`` of bench/tune.py: in-loop Hyperband with slot refilling against no pruning, in :mod:`hamjax.tune`.

The task, space, trial budget and seeds are part ``compare``'s
(bench/tune_compare.py: the digits MLP, learning rate, weight decay and
label smoothing, ``EPOCHS`` epochs a trial, TPE with the constant liar,
batches of ``BATCH_TRIALS``; 5 seeds of 128 trials, ``--quick`` 2 of 64).
Each seed runs :func:`hamjax.tune.run` three times: ``pruner=None``, the
target arm ``hyperband`` (Optuna's ``HyperbandPruner(min_resource=1,
max_resource=EPOCHS, reduction_factor=4)`` passed as an object), and, as a
figure, ``hyperband_rf3`` (``pruner="hyperband"``: :mod:`hamjax.tune`'s own,
reduction factor 3). Every member reports its validation accuracy after each
epoch; a round's members at the same epoch ask the pruner in
:func:`hamjax.tune.samplers.judging_order`, so each rung promotes a cohort's
top share as a synchronous rung would; a pruned member's slot is refilled at
once with a newly asked trial. Member-epochs are the epochs trained summed
over trials (:attr:`hamjax.tune.TuneResult.member_epochs`).

Why reduction factor 4: with ``EPOCHS`` = 10 and factor 3, Hyperband's
brackets have their first rungs at epochs 1, 3 and 9, and the bracket that
first stops trials at epoch 9 of 10 takes about a sixth of the trials, so
even a synchronous Hyperband spends about 0.44 of no pruning's
member-epochs; with factor 4 (two brackets, rungs at 1 and 4, then 4) the
synchronous figure is about 0.33. Factor 3 was measured first (0.57 of no
pruning's member-epochs, then 0.54 with cohort judging), factor 4 on the
same seeds after it: the choice was made with those figures in view.

Targets, from the means over seeds: ``hyperband``'s member-epochs / no
pruning's <= 0.4; its best validation accuracy >= no pruning's minus 0.3
points. End-to-end seconds are recorded beside them.
"""

from __future__ import annotations

import statistics

from tune_compare import EPOCHS, FULL, QUICK, batched, load, tune_available

EPOCHS_RATIO, ACCURACY_POINTS = 0.4, 0.3
PRUNERS = {"none": None, "hyperband": "factor 4", "hyperband_rf3": "hyperband"}


def pruner(name: str):
    """The pruner of arm ``name`` (:data:`PRUNERS`); ``"factor 4"``: a new Optuna ``HyperbandPruner`` (it keeps state)."""
    if PRUNERS[name] != "factor 4":
        return PRUNERS[name]
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS, reduction_factor=4)


def run(quick: bool) -> tuple[list, list]:
    budget = QUICK if quick else FULL
    scope = f"{budget['trials']} trials x {budget['seeds']} seeds"
    epochs_name = f"in-loop Hyperband with slot refilling: member-epochs / no pruning's ({scope})"
    accuracy_name = f"in-loop Hyperband: best val accuracy minus no pruning's, points ({scope})"
    if not tune_available():
        note = "hamjax.tune is not built yet: nothing measured"
        return [], [
            {"name": epochs_name, "measured": "absent", "goal": f"<= {EPOCHS_RATIO}", "met": False, "note": note},
            {"name": accuracy_name, "measured": "absent", "goal": f">= -{ACCURACY_POINTS}", "met": False, "note": note},
        ]
    ds = load()
    results, outs = [], {name: [] for name in PRUNERS}
    for seed in range(budget["seeds"]):
        names = list(PRUNERS)[seed % 3 :] + list(PRUNERS)[: seed % 3]  # the order rotates from seed to seed
        for name in names:
            out = batched(ds, seed, budget["trials"], pruner=pruner(name))
            outs[name].append(out)
            results.append(
                {
                    "pruner": name,
                    "seed": seed,
                    "trials": budget["trials"],
                    "seconds": round(out["seconds"], 2),
                    "best_val_accuracy": round(out["best"], 4),
                    "member_epochs": out["member_epochs"],
                    "execution": out["execution"],
                }
            )
            print(
                f"tune/hyperband: seed {seed} {name}: {out['seconds']:.1f} s, {out['member_epochs']} member-epochs, "
                f"best val accuracy {out['best']:.4f}"
            )
    means = {
        name: {key: statistics.mean(o[key] for o in rows) for key in ("seconds", "best", "member_epochs")}
        for name, rows in outs.items()
    }
    results.append({"means": {k: {m: round(v, 4) for m, v in d.items()} for k, d in means.items()}, **budget})
    ratio = means["hyperband"]["member_epochs"] / means["none"]["member_epochs"]
    gap = 100 * (means["hyperband"]["best"] - means["none"]["best"])
    return results, [
        {"name": epochs_name, "measured": round(ratio, 3), "goal": f"<= {EPOCHS_RATIO}", "met": ratio <= EPOCHS_RATIO},
        {
            "name": accuracy_name,
            "measured": round(gap, 2),
            "goal": f">= -{ACCURACY_POINTS}",
            "met": gap >= -ACCURACY_POINTS,
        },
    ]


def main(argv=None) -> int:
    import argparse

    from timing import finish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['seeds']} seeds of {QUICK['trials']} trials")
    args = parser.parse_args(argv)
    results, goals = run(args.quick)
    return finish("tune_hyperband", results, goals)


if __name__ == "__main__":
    raise SystemExit(main())
