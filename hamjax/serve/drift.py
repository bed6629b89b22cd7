"""Input drift: served inputs binned on the reference statistics' edges, compared by PSI and a binned KS statistic.

For a feature with reference proportions ``e_k`` and served proportions
``a_k`` over the same bins (both floored at :data:`~hamjax.serve.reference.FLOOR`
so an empty bin stays finite), the population stability index is

    PSI = sum_k (a_k - e_k) * ln(a_k / e_k).

The usual reading: below 0.1 no shift, 0.1 to 0.2 a moderate one, above 0.2
a significant one; :class:`DriftMonitor` alerts when the largest PSI over
features passes ``threshold`` (0.2 by default). Under no drift the PSI of
``n`` rows is about ``(bins - 1) / n`` (a chi-square over ``n``), so the alert
waits for ``min_rows`` rows in the window.

The KS statistic reported is **binned**: the largest gap between the two
cumulative distributions at the bin edges, ``max_k |sum_{j<=k} a_j - e_j|``
(unfloored proportions). It is a lower bound of the two-sample KS statistic
of the raw values, exact at the edges.

Window: the monitor keeps the bin indices of the most recent ``window`` rows
in a ring buffer (``window * features`` bytes) and their bin counts, so the
windowed PSI is that of exactly the last ``window`` rows (fewer until that many
were seen); counts since start are kept too and reported beside it. The alert
reads the window.
"""

from __future__ import annotations

import threading

import numpy as np

from hamjax import _checks
from hamjax.serve.reference import FLOOR, InputStats, bin_counts

DEFAULT_THRESHOLD = 0.2


def psi(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per-feature PSI of bin counts ``(F, bins)`` against floored expected proportions ``(F, bins)``.

    Rows with no counts give 0.

    Examples:
      >>> e = np.full((1, 4), 0.25)
      >>> float(psi(np.array([[25, 25, 25, 25]]), e)[0]), round(float(psi(np.array([[70, 10, 10, 10]]), e)[0]), 3)
      (0.0, 0.876)
    """
    n = counts.sum(axis=1, keepdims=True)
    actual = np.maximum(counts / np.maximum(n, 1), FLOOR)
    out = np.sum((actual - expected) * np.log(actual / expected), axis=1)
    return np.where(n[:, 0] > 0, out, 0.0)


def binned_ks(counts: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """Per-feature largest gap between the cumulative bin proportions of ``counts`` and ``proportions``.

    Examples:
      >>> float(binned_ks(np.array([[50, 50, 0]]), np.array([[0.0, 0.5, 0.5]]))[0])
      0.5
    """
    n = counts.sum(axis=1, keepdims=True)
    gap = np.abs(np.cumsum(counts / np.maximum(n, 1), axis=1) - np.cumsum(proportions, axis=1))
    return np.where(n[:, 0] > 0, gap.max(axis=1), 0.0)


class DriftMonitor:
    """Running drift statistics of served inputs against an :class:`~hamjax.serve.reference.InputStats`.

    Thread-safe: :meth:`observe` bins outside the lock (vectorised over the
    batch and the features) and takes the lock only to update the counts.

    Args:
      reference: the reference statistics (usually the training split's).
      window: rows in the sliding window the alert reads (>= 1).
      threshold: the PSI above which a feature alerts (default 0.2).
      min_rows: rows the window needs before an alert can fire.
      top: how many worst features :meth:`report` lists.

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> monitor = DriftMonitor(InputStats.from_data(rng.normal(size=(5000, 3))), window=2000)
      >>> shifted = rng.normal(size=(2000, 3)) + np.array([0.0, 0.0, 1.0])
      >>> monitor.observe(shifted)
      >>> report = monitor.report()
      >>> report["alert"], report["worst"][0]["feature"], monitor.rows
      (True, 'x[2]', 2000)
    """

    def __init__(
        self,
        reference: InputStats,
        *,
        window: int = 5000,
        threshold: float = DEFAULT_THRESHOLD,
        min_rows: int = 500,
        top: int = 16,
    ):
        if not isinstance(reference, InputStats):
            raise ValueError(f"DriftMonitor: reference must be an InputStats, got {type(reference).__name__}")
        self.reference = reference
        self.window = _checks.check_int("DriftMonitor", "window", window, minimum=1)
        self.threshold = _checks.check_positive("DriftMonitor", "threshold", threshold)
        self.min_rows = _checks.check_int("DriftMonitor", "min_rows", min_rows, minimum=1)
        self.top = _checks.check_int("DriftMonitor", "top", top, minimum=1)
        self._names = reference.names()
        self._lock = threading.Lock()
        features, bins = reference.features, reference.bins
        self._ring = np.zeros((self.window, features), np.uint8)
        self._position = 0
        self._filled = 0
        self._window_counts = np.zeros((features, bins), np.int64)
        self._total_counts = np.zeros((features, bins), np.int64)
        self._sums = np.zeros(features)
        self._rows = 0

    @property
    def rows(self) -> int:
        """Rows observed since start."""
        with self._lock:
            return self._rows

    @property
    def psi_max(self) -> float:
        """The largest windowed PSI over features (0.0 before any row)."""
        with self._lock:
            counts = self._window_counts.copy()
        return float(psi(counts, self.reference.expected).max(initial=0.0))

    def observe(self, x) -> None:
        """Count a batch of inputs ``x`` ``(n, *input_shape)`` (finite: the server validates first).

        Raises:
          ValueError: ``x``'s trailing shape is not the reference's.
        """
        values = self.reference.flatten(x)
        if not len(values):
            return
        indices = self.reference.bin_features(values)
        bins = self.reference.bins
        counts = bin_counts(indices, bins)
        sums = values.sum(axis=0)
        recent = indices[-self.window :]
        with self._lock:
            self._total_counts += counts
            self._sums += sums
            self._rows += len(values)
            slots = (self._position + np.arange(len(recent))) % self.window
            replaced = slots[slots < self._filled]
            if len(replaced):
                self._window_counts -= bin_counts(self._ring[replaced], bins)
            self._ring[slots] = recent
            self._window_counts += counts if len(recent) == len(indices) else bin_counts(recent, bins)
            self._position = int((self._position + len(recent)) % self.window)
            self._filled = min(self.window, self._filled + len(recent))

    def report(self) -> dict:
        """The drift state: windowed per-feature PSI and binned KS, the worst features, the alert.

        Returns:
          A JSON-ready dict: ``rows`` (since start), ``window_rows``,
          ``window``, ``threshold``, ``min_rows``, ``alert`` (window rows >=
          ``min_rows`` and ``psi_max`` > ``threshold``), ``psi_max`` and
          ``ks_max`` (window), ``psi_max_since_start``, ``worst`` (up to
          ``top`` features by windowed PSI: ``feature`` name, ``index``,
          ``psi``, ``ks``, ``mean`` since start, ``reference_mean``,
          ``reference_std``), and ``psi`` / ``ks`` per feature (window, in
          feature order, rounded to 6 digits), ``features``, ``ks_binned``
          (always True: see the module docstring).
        """
        with self._lock:
            window_counts = self._window_counts.copy()
            total_counts = self._total_counts.copy()
            sums = self._sums.copy()
            rows, filled = self._rows, self._filled
        ref = self.reference
        window_psi = psi(window_counts, ref.expected)
        window_ks = binned_ks(window_counts, ref.proportions)
        total_psi = psi(total_counts, ref.expected)
        means = sums / max(rows, 1)
        order = np.argsort(-window_psi, kind="stable")[: self.top]
        psi_max = float(window_psi.max(initial=0.0))
        worst = [
            {
                "feature": self._names[i],
                "index": int(i),
                "psi": round(float(window_psi[i]), 6),
                "ks": round(float(window_ks[i]), 6),
                "mean": float(means[i]) if rows else None,
                "reference_mean": float(ref.mean[i]),
                "reference_std": float(ref.std[i]),
            }
            for i in order
        ]
        return {
            "rows": rows,
            "window_rows": filled,
            "window": self.window,
            "threshold": self.threshold,
            "min_rows": self.min_rows,
            "alert": bool(filled >= self.min_rows and psi_max > self.threshold),
            "psi_max": psi_max,
            "ks_max": float(window_ks.max(initial=0.0)),
            "psi_max_since_start": float(total_psi.max(initial=0.0)),
            "features": ref.features,
            "ks_binned": True,
            "worst": worst,
            "psi": np.round(window_psi, 6).tolist(),
            "ks": np.round(window_ks, 6).tolist(),
        }
