"""Hyperparameter search: Optuna studies whose trials train in batches, as members of one population.

Optuna asks a batch of trials; their values become ``(P,)`` arrays of one
:class:`hamjax.search.population.Population`, so the batch trains in one
compiled call per shape bucket instead of one compile per trial; every
member reports each epoch to the study's pruner, and a pruned or finished
member's slot is refilled at once with a newly asked trial.

* :mod:`hamjax.tune.space`: :class:`Space`, from a table or a recipe's
  ``[steps.search]`` tables; traced and bucketed names.
* :mod:`hamjax.tune.samplers`: samplers, pruners and objective directions by name.
* :mod:`hamjax.tune.study`: the study created or resumed, its records
  (objectives, space, execution) and warm starts.
* :mod:`hamjax.tune.runner`: :func:`run` (alias :func:`tune`), the batched ask/tell loop;
  :mod:`hamjax.tune.slots`: the population state whose members are trials;
  :mod:`hamjax.tune.models`: the model and trainer of each structural bucket (``width``, ``depth``, ``activation``).
* :mod:`hamjax.tune.storage`: storages by URL (memory, SQLite, journal file,
  PostgreSQL); :mod:`hamjax.tune.bookkeeping`: batched ask and tell;
  :mod:`hamjax.tune.workers`: many workers on one study, the trials of dead ones retried;
  :mod:`hamjax.tune.transactions`: a batch written to a SQL storage in one transaction.
* :mod:`hamjax.tune.result`: :class:`TuneResult`, the best trial as a recipe TOML.

Optuna is imported when a study is made, not with this package.

Examples:
  >>> from hamjax import tune
  >>> tune.Space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}}).traced
  ('learning_rate',)
"""

from hamjax.tune import (
    bookkeeping,
    models,
    result,
    runner,
    samplers,
    slots,
    space,
    storage,
    study,
    transactions,
    workers,
)
from hamjax.tune.result import TuneResult
from hamjax.tune.runner import run, tune
from hamjax.tune.samplers import OBJECTIVES, PRUNERS, SAMPLERS
from hamjax.tune.space import BUCKETED, SEARCHABLE, TRACED, Space

__all__ = [
    "BUCKETED",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "SEARCHABLE",
    "TRACED",
    "Space",
    "TuneResult",
    "bookkeeping",
    "models",
    "result",
    "run",
    "runner",
    "samplers",
    "slots",
    "space",
    "storage",
    "study",
    "transactions",
    "tune",
    "workers",
]
