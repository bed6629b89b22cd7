"""Datasets for training and evaluation: bundled ones, the user's own arrays, resumable batching.

* :func:`load` reads a bundled real dataset (``"mnist"``, ``"digits"``);
  nothing is ever downloaded.
* :func:`from_arrays` and :func:`load_npz` make the same :class:`Dataset`
  from the user's arrays, checked before anything else runs.
* :func:`check_dataset` and the checks it is made of (:func:`check_split`,
  :func:`check_inputs`, :func:`check_labels`) are the ones :func:`from_arrays`,
  :func:`hamjax.fit` and :func:`hamjax.train.evaluate` run on their data.
* :func:`batch_at` returns the batch that global training step ``step``
  uses, a pure function of ``(seed, step)``, so a run killed at any step
  resumes on exactly the batches it would have seen.
* :func:`stream` (from :mod:`hamjax.streaming`) cuts a large array, or a
  generator of arrays, into fixed-shape chunks that a background thread puts
  on the device ahead of the consumer.

Examples:
  >>> from hamjax import data
  >>> ds = data.load("digits")
  >>> x, y = data.batch_at(ds.train, 32, step=0, seed=0)
  >>> x.shape, y.dtype
  ((32, 8, 8, 1), dtype('int32'))
"""

from hamjax.data.arrays import NPZ_KEYS, from_arrays, load_npz
from hamjax.data.batching import batch_at, batch_indices, batches, epoch_permutation, steps_per_epoch
from hamjax.data.bundled import DATASETS, load
from hamjax.data.checks import (
    UnscaledInputsWarning,
    check_dataset,
    check_inputs,
    check_labels,
    check_split,
    describe_value,
)
from hamjax.data.splits import Dataset, Split, split_indices, split_sizes, stratified_counts
from hamjax.streaming import Chunk, stream

__all__ = [
    "DATASETS",
    "NPZ_KEYS",
    "Chunk",
    "Dataset",
    "Split",
    "UnscaledInputsWarning",
    "batch_at",
    "batch_indices",
    "batches",
    "check_dataset",
    "check_inputs",
    "check_labels",
    "check_split",
    "describe_value",
    "epoch_permutation",
    "from_arrays",
    "load",
    "load_npz",
    "split_indices",
    "split_sizes",
    "steps_per_epoch",
    "stratified_counts",
    "stream",
]
