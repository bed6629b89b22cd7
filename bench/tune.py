"""Hyperparameter search benchmark: issue 19's targets for :mod:`hamjax.tune` in one run.

Run: ``python bench/tune.py --quick`` (each part's short variant) or
``python bench/tune.py``; ``--parts compare`` picks parts. The last line
printed is one JSON object: ``{"bench": "tune", "env", "results",
"targets"}`` (``env`` carries the machine, its ``lscpu`` flags and the
package versions); every result and target carries the ``part`` it came
from.

Each part is its own script, runnable alone (``python bench/tune_compare.py
--quick``), exposing ``run(quick) -> (results, targets)``:

* ``compare``: Optuna studies of the digits MLP (learning rate, weight
  decay, label smoothing; TPE): idiomatic sequential Optuna + JAX (a
  ``fit`` per trial, float hyperparameters, a compile per trial), careful
  sequential (one compiled step, hyperparameters injected as arrays) and
  :func:`hamjax.tune.run` in batches; end-to-end seconds and best
  validation accuracy, means over seeds;
* ``hyperband``: :func:`hamjax.tune.run` with in-loop Hyperband (reduction
  factor 4; factor 3 as a figure; pruned
  slots refilled at once) against no pruning on the same task: member-epochs
  and best validation accuracy;
* ``storage``: the bookkeeping of a batch (ask + tell + storage) per trial
  at batch 64 after 1,000 trials, SQLite and the journal file, against
  Optuna's own loop;
* ``workers``: 4 worker processes on one journal-file study and 4 on one
  PostgreSQL study, one SIGKILLed midway; each study audited (every trial
  COMPLETE, PRUNED or FAIL-then-retried, none lost or written twice);
* ``gpu``: 4,096 trials of the digits MLP in batches of 1,024, end to end,
  on a GPU backend (on a CPU it measures nothing and says so).

Parts run one after another in one process, so ratios within a part are
measured in the same run.
"""

from __future__ import annotations

import sys

from timing import run_parts

PARTS = ("compare", "hyperband", "storage", "workers", "gpu")


def main(argv=None) -> int:
    return run_parts("tune", PARTS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
