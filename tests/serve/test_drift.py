"""DriftMonitor: PSI and binned KS against the reference, the window, the alert, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hamjax.serve.drift import DriftMonitor, binned_ks, psi
from hamjax.serve.reference import InputStats


@pytest.fixture(scope="module")
def stats():
    return InputStats.from_data(np.random.default_rng(0).random((5000, 28, 28, 1), dtype=np.float32))


def test_same_distribution_gives_small_psi(stats):
    monitor = DriftMonitor(stats, window=4000)
    rng = np.random.default_rng(1)
    for _ in range(125):
        monitor.observe(rng.random((32, 28, 28, 1), dtype=np.float32))
    report = monitor.report()
    assert report["rows"] == 4000 and report["window_rows"] == 4000
    assert report["psi_max"] < 0.1 and not report["alert"]
    assert report["ks_max"] < 0.05 and report["ks_binned"] is True
    assert len(report["psi"]) == 784 and len(report["worst"]) == 16


def test_a_shifted_feature_is_detected_and_named(stats):
    monitor = DriftMonitor(stats, window=2000, threshold=0.2)
    rng = np.random.default_rng(2)
    x = rng.random((2000, 28, 28, 1), dtype=np.float32)
    x[:, 3, 14, 0] = np.clip(x[:, 3, 14, 0] + 0.4, 0, 1)
    monitor.observe(x)
    report = monitor.report()
    assert report["alert"] and report["psi_max"] > 0.2 and monitor.psi_max == report["psi_max"]
    worst = report["worst"][0]
    assert worst["feature"] == "x[3,14,0]" and worst["index"] == 3 * 28 + 14
    assert worst["ks"] > 0.3 and worst["mean"] == pytest.approx(x[:, 3, 14, 0].mean(), rel=1e-5)
    assert report["worst"][1]["psi"] < 0.1


def test_the_window_forgets_and_since_start_remembers(stats):
    monitor = DriftMonitor(stats, window=1000)
    rng = np.random.default_rng(3)
    monitor.observe(np.clip(rng.random((1500, 28, 28, 1)) + 0.5, 0, 1))
    assert monitor.report()["alert"]
    for _ in range(7):
        monitor.observe(rng.random((150, 28, 28, 1)))
    report = monitor.report()
    assert report["window_rows"] == 1000 and monitor.rows == 2550
    assert report["psi_max"] < 0.1 and not report["alert"]
    assert report["psi_max_since_start"] > 0.2


def test_window_counts_equal_a_recount_of_the_last_rows():
    small = InputStats.from_data(np.random.default_rng(4).normal(size=(300, 3)), bins=5)
    monitor = DriftMonitor(small, window=50, min_rows=1)
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(int(n), 3)) + 0.3 for n in rng.integers(1, 40, 20)]
    for b in batches:
        monitor.observe(b)
    last = np.concatenate(batches)[-50:]
    counts = np.stack([np.bincount(c, minlength=5) for c in small.bin(last).T])
    np.testing.assert_allclose(monitor.report()["psi"], np.round(psi(counts, small.expected), 6))


def test_no_alert_before_min_rows(stats):
    monitor = DriftMonitor(stats, min_rows=500)
    monitor.observe(np.ones((100, 28, 28, 1), np.float32))
    report = monitor.report()
    assert report["psi_max"] > 0.2 and not report["alert"]


def test_concurrent_observers_lose_no_rows(stats):
    monitor = DriftMonitor(stats, window=700)
    x = np.random.default_rng(6).random((10, 28, 28, 1), dtype=np.float32)

    def work():
        for _ in range(40):
            monitor.observe(x)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert monitor.rows == 1600 and monitor.report()["window_rows"] == 700
    serial = DriftMonitor(stats, window=700)
    serial.observe(np.concatenate([x] * 160))
    assert monitor.report()["psi"] == serial.report()["psi"]


def test_empty_monitor_and_helpers():
    small = InputStats.from_data(np.arange(40.0).reshape(20, 2), bins=4)
    report = DriftMonitor(small).report()
    assert report["rows"] == 0 and report["psi_max"] == 0.0 and not report["alert"]
    assert binned_ks(np.zeros((1, 3)), np.array([[0.2, 0.3, 0.5]])).tolist() == [0.0]
    monitor = DriftMonitor(small)
    monitor.observe(np.zeros((0, 2)))
    assert monitor.rows == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"window": 0}, "window"), ({"threshold": -1}, "threshold"), ({"min_rows": 0}, "min_rows")],
)
def test_bad_arguments_are_refused(stats, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DriftMonitor(stats, **kwargs)


def test_wrong_shape_is_refused(stats):
    with pytest.raises(ValueError, match="shape"):
        DriftMonitor(stats).observe(np.zeros((2, 28, 28)))
