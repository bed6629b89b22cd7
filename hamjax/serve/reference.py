"""Reference input statistics of a served model: what the drift monitor compares served inputs against.

:class:`InputStats` (quantile bin edges, bin proportions, mean, std, min,
max and count per flattened input feature) and :func:`stats_path` (the
``.stats.json`` file beside a model) are defined in
:mod:`hamjax.export.input_stats`, one layer below ``recipes``, because the
export step of recipes and ``hamjax export`` write them next to every ONNX
file they produce; the server reads them from here.

Examples:
  >>> import numpy as np
  >>> from hamjax.serve.reference import InputStats, stats_path
  >>> stats = InputStats.from_data(np.random.default_rng(0).normal(size=(500, 4)))
  >>> stats.features, stats_path("out/model.fp32.onnx").name
  (4, 'model.fp32.stats.json')
"""

from hamjax.export.input_stats import FLOOR, MAX_FEATURES, MAX_ROWS, VERSION, InputStats, bin_counts, stats_path

__all__ = ["FLOOR", "MAX_FEATURES", "MAX_ROWS", "VERSION", "InputStats", "bin_counts", "stats_path"]
