"""hamjax.serve.reference: the server's view of the input statistics written beside exported models."""

from __future__ import annotations

import numpy as np

from hamjax.export import input_stats
from hamjax.serve import reference


def test_reference_is_the_export_layers_statistics(tmp_path):
    assert reference.InputStats is input_stats.InputStats and reference.stats_path is input_stats.stats_path
    x = np.random.default_rng(0).normal(size=(400, 5, 2)).astype(np.float32)
    path = reference.InputStats.from_data(x).save(reference.stats_path(tmp_path / "m.int8.onnx"))
    loaded = reference.InputStats.load(tmp_path / "m.int8.stats.json")
    assert path.exists() and loaded.shape == (5, 2) and loaded.features == 10
    assert loaded.names()[:3] == ["x[0,0]", "x[0,1]", "x[1,0]"]
