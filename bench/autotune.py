"""Autotune benchmark: issue 20's targets for :mod:`hamjax.autotune` in one run.

Run: ``python bench/autotune.py --quick`` (each part's short variant: the
four small models, a budget of 4) or ``python bench/autotune.py`` (the eight
models of bench/autotune_models.py, a budget of 8); ``--parts cold,warm``
picks parts. The last line printed is one JSON object: ``{"bench":
"autotune", "env", "results", "targets"}`` (``env`` carries the machine, its
AVX-512 flags and the package versions); every result and target carries the
``part`` it came from.

Each part is its own script, runnable alone (``python bench/autotune_cold.py
--quick``), exposing ``run(quick) -> (results, targets)``:

* ``cold``: each model autotuned from nothing (at most 1 point of accuracy
  lost, 4x smaller than dense) by the hybrid strategy, random and Optuna TPE
  at equal budget;
* ``warm``: leave-one-out knowledge bases built from the other models' cold
  runs, clean (a small budget) and with 30% of the records corrupted (the
  cold budget), against the cold hybrid run;
* ``explain``: the layer-sensitivity ranking (one vmapped call) against
  per-layer ablation, Spearman, on the MLPs and CNNs;
* ``writers``: 4 processes writing one knowledge base, SQLite and
  PostgreSQL: every record there once.

Parts run one after another in one process (``warm`` reuses ``cold``'s runs).
"""

from __future__ import annotations

import sys

from timing import run_parts

PARTS = ("cold", "warm", "explain", "writers")

if __name__ == "__main__":
    sys.exit(run_parts("autotune", PARTS, __doc__.splitlines()[0]))
