"""InputStats: quantile edges, proportions, moments, JSON round trip and refusal of bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hamjax.export.input_stats import FLOOR, MAX_FEATURES, VERSION, InputStats, stats_path


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((3000, 28, 28, 1), dtype=np.float32)


def test_continuous_feature_gets_deciles(images):
    stats = InputStats.from_data(images)
    assert stats.features == 784 and stats.bins == 10 and stats.count == 3000 and stats.stride == 1
    np.testing.assert_allclose(stats.proportions, 0.1, atol=2e-3)
    np.testing.assert_allclose(stats.inner[0], np.arange(1, 10) / 10, atol=0.03)
    np.testing.assert_allclose(stats.mean, 0.5, atol=0.03)
    np.testing.assert_allclose(stats.std, np.sqrt(1 / 12), atol=0.02)
    assert stats.min.min() >= 0 and stats.max.max() <= 1
    assert stats.names()[0] == "x[0,0,0]" and stats.names()[-1] == "x[27,27,0]"


def test_constant_and_discrete_features_keep_distinct_edges_and_true_frequencies():
    rng = np.random.default_rng(1)
    x = np.stack([np.zeros(1000), rng.integers(0, 3, 1000), rng.normal(size=1000)], axis=1)
    stats = InputStats.from_data(x)
    assert stats.edges(0).tolist() == [-np.inf, 0.0, np.inf]
    assert stats.proportions[0].tolist()[:2] == [0.0, 1.0]
    assert stats.edges(1).tolist() == [-np.inf, 0.0, 1.0, 2.0, np.inf]
    np.testing.assert_allclose(stats.proportions[1, 1:4], np.bincount(x[:, 1].astype(int)) / 1000)
    assert len(stats.edges(2)) == 11 and np.all(np.diff(stats.edges(2)) > 0)
    assert np.all(stats.expected >= FLOOR)


def test_bins_follow_the_documented_rule():
    stats = InputStats.from_data(np.array([[0.0], [1.0], [2.0], [3.0]]), bins=4)
    edges = stats.edges(0)[1:-1]
    values = np.array([[-5.0], [edges[0]], [edges[-1]], [99.0]])
    assert stats.bin(values)[:, 0].tolist() == [0, 1, len(edges), len(edges)]


def test_wide_inputs_are_strided_to_the_cap():
    x = np.random.default_rng(2).random((50, 3 * MAX_FEATURES + 5), dtype=np.float32)
    stats = InputStats.from_data(x, bins=4)
    assert stats.stride == 4 and stats.features <= MAX_FEATURES
    np.testing.assert_allclose(stats.mean, x[:, ::4].mean(axis=0), rtol=1e-5)


def test_json_round_trip_is_exact(tmp_path, images):
    stats = InputStats.from_data(images[:500], bins=8)
    path = stats.save(stats_path(tmp_path / "model.fp32.onnx"))
    assert path.name == "model.fp32.stats.json"
    loaded = InputStats.load(path)
    assert loaded.shape == (28, 28, 1) and loaded.count == 500 and loaded.version == VERSION
    for name in ("inner", "proportions", "mean", "std", "min", "max"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
    assert not list(tmp_path.glob(".*tmp"))


def test_stats_path_of_a_directory_is_a_sibling(tmp_path):
    (tmp_path / "model").mkdir()
    assert stats_path(tmp_path / "model") == tmp_path / "model.stats.json"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(version=VERSION + 1), "newer format version"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.pop("mean"), "mean"),
        (lambda d: d.update(edges=d["edges"][:1]), "edges"),
        (lambda d: d["edges"][0].reverse(), "increasing"),
        (lambda d: d["proportions"][0].__setitem__(0, 5.0), "sum to 1"),
        (lambda d: d.update(std=["a"] * 4), "not a valid"),
    ],
)
def test_load_refuses_a_malformed_file(tmp_path, change, match):
    d = InputStats.from_data(np.random.default_rng(3).normal(size=(100, 4))).to_json()
    change(d)
    path = tmp_path / "m.stats.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        InputStats.load(path)


def test_load_refuses_text_that_is_not_json(tmp_path):
    path = tmp_path / "m.stats.json"
    path.write_bytes(b"\x00\xffnot json")
    with pytest.raises(ValueError, match="not a valid input statistics file"):
        InputStats.load(path)


@pytest.mark.parametrize(
    "x", [np.zeros((1, 3)), np.array([["a", "b"], ["c", "d"]]), np.array([[1.0, np.nan], [0.0, 0.0]])]
)
def test_from_data_refuses_bad_inputs(x):
    with pytest.raises(ValueError, match="InputStats.from_data"):
        InputStats.from_data(x)
