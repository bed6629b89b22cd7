"""Reference statistics of a model's inputs, saved as JSON beside an exported model for drift monitoring.

:class:`InputStats` summarises every (flattened) input feature of a
reference set, usually the training split: ``bins`` quantile bins (their
inner edges, the outer edges being -inf and +inf), the proportion of
reference rows in each bin, and the mean, standard deviation, minimum and
maximum. :mod:`hamjax.serve.drift` bins served inputs on the same edges and
compares proportions (population stability index, binned KS statistic).

Binning: a value ``v`` of feature ``f`` falls in bin ``k`` = the number of
inner edges ``<= v``, so bin 0 is ``(-inf, e_0)``, bin ``k`` is
``[e_{k-1}, e_k)`` and the last bin ``[e_last, +inf)``. Quantile edges
that coincide (a constant feature, a discrete one, the zero border of an
image) are kept once; a feature with fewer distinct edges has fewer bins,
and the unused slots of the ``(features, bins - 1)`` edge array hold +inf
(no value lands past them). The proportions are those of the reference
rows binned exactly this way, so a discrete feature's proportions are its
true frequencies, not ``1 / bins``.

The statistics live at layer ``export`` (below ``recipes``) so the export
step of recipes and ``hamjax export`` can write them next to every ONNX
file; :mod:`hamjax.serve.reference` is where the server takes them from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from hamjax import _checks
from hamjax.checkpoint import atomic_write

FORMAT = "hamjax-input-stats"
VERSION = 1
MAX_FEATURES = 4096  # beyond this, every k-th flattened feature is summarised (see InputStats.stride)
MAX_ROWS = 20_000  # rows sampled (evenly spaced) for the quantiles and proportions
FLOOR = 1e-4  # proportions are floored at this in the PSI so an empty bin stays finite
_CHUNK = 4096


def stats_path(model_path: str | os.PathLike) -> Path:
    """The ``.stats.json`` file beside a model: ``model.fp32.onnx`` -> ``model.fp32.stats.json``.

    A directory (a saved model) gets a sibling file: ``out/model`` -> ``out/model.stats.json``.

    Args:
      model_path: an ONNX file or a saved model's directory (it need not exist yet).

    Returns:
      The path of the statistics file.

    Examples:
      >>> stats_path("export/model.int8.onnx").as_posix()
      'export/model.int8.stats.json'
    """
    path = Path(model_path)
    if path.suffix and not path.is_dir():
        return path.with_suffix(".stats.json")
    return path.with_name(path.name + ".stats.json")


def _bin(inner: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bin index of every entry of ``x`` ``(n, F)``: the count of inner edges ``<= x`` (uint8), in row chunks."""
    out = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), _CHUNK):
        chunk = x[start : start + _CHUNK]
        out[start : start + _CHUNK] = (chunk[:, :, None] >= inner[None, :, :]).sum(axis=-1, dtype=np.uint8)
    return out


def bin_counts(indices: np.ndarray, bins: int) -> np.ndarray:
    """Counts ``(F, bins)`` of the bin indices ``(n, F)`` that :meth:`InputStats.bin` returns (one ``bincount``).

    Examples:
      >>> bin_counts(np.array([[0, 2], [1, 2]], np.uint8), 3).tolist()
      [[1, 1, 0], [0, 0, 2]]
    """
    features = indices.shape[1]
    flat = indices.astype(np.int64) + np.arange(features, dtype=np.int64) * bins
    return np.bincount(flat.ravel(), minlength=features * bins).reshape(features, bins)


@dataclasses.dataclass(frozen=True, eq=False)
class InputStats:
    """Per-feature statistics of reference inputs (see the module docstring for the binning).

    Attributes:
      shape: one input's shape (without the batch axis).
      stride: every ``stride``-th flattened feature is summarised (1 unless
        the input has more than :data:`MAX_FEATURES` features).
      inner: ``(F, bins - 1)`` float64 inner bin edges per summarised
        feature, ascending, unused slots +inf.
      proportions: ``(F, bins)`` share of the reference rows in each bin
        (rows sum to 1; unused bins 0).
      mean, std, min, max: ``(F,)`` float64 over all reference rows.
      count: reference rows summarised (the moments use all of them).
      sampled: rows the quantiles and proportions come from (at most :data:`MAX_ROWS`).
      version: the file format version (:data:`VERSION`).

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> stats = InputStats.from_data(rng.normal(size=(1000, 3)))
      >>> stats.features, stats.bins, stats.count
      (3, 10, 1000)
      >>> stats.proportions.sum(axis=1).round(6).tolist()
      [1.0, 1.0, 1.0]
    """

    shape: tuple[int, ...]
    stride: int
    inner: np.ndarray
    proportions: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: int
    sampled: int
    version: int = VERSION

    @property
    def features(self) -> int:
        """Summarised features ``F``."""
        return int(self.inner.shape[0])

    @property
    def bins(self) -> int:
        """Bin slots per feature (``bins`` of :meth:`from_data`; a feature may use fewer)."""
        return int(self.inner.shape[1]) + 1

    @property
    def expected(self) -> np.ndarray:
        """``(F, bins)`` proportions floored at :data:`FLOOR` (what the PSI compares against)."""
        return np.maximum(self.proportions, FLOOR)

    def edges(self, feature: int) -> np.ndarray:
        """Feature ``feature``'s bin edges, -inf and +inf outermost, duplicates and padding removed."""
        inner = self.inner[feature]
        return np.concatenate([[-np.inf], inner[np.isfinite(inner)], [np.inf]])

    def names(self) -> list[str]:
        """A name per summarised feature: its index in the input, e.g. ``"x[3,14,0]"``."""
        flat = np.arange(self.features) * self.stride
        if not self.shape:
            return ["x"]
        index = np.unravel_index(flat, self.shape)
        return ["x[" + ",".join(str(int(i[k])) for i in index) + "]" for k in range(self.features)]

    def flatten(self, x) -> np.ndarray:
        """``x`` ``(n, *shape)`` as float64 ``(n, F)``: flattened, every ``stride``-th feature.

        Raises:
          ValueError: ``x``'s trailing shape is not :attr:`shape`.
        """
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(f"InputStats: x must have shape (n, *{tuple(self.shape)}), got {x.shape}")
        return x.reshape(len(x), math.prod(self.shape))[:, :: self.stride].astype(np.float64, copy=False)

    def bin(self, x) -> np.ndarray:
        """Bin indices ``(n, F)`` uint8 of inputs ``x`` ``(n, *shape)`` (vectorised over rows and features)."""
        return self.bin_features(self.flatten(x))

    def bin_features(self, values: np.ndarray) -> np.ndarray:
        """Bin indices ``(n, F)`` uint8 of already flattened features ``values`` ``(n, F)`` (:meth:`flatten`)."""
        return _bin(self.inner, values)

    @classmethod
    def from_data(cls, x, bins: int = 10) -> InputStats:
        """Statistics of reference inputs ``x`` ``(n, *input_shape)``.

        Args:
          x: finite numbers, at least 2 rows; the moments use every row, the
            quantile edges and proportions up to :data:`MAX_ROWS` evenly
            spaced rows (deterministic).
          bins: quantile bins per feature, 2 to 64.

        Returns:
          An :class:`InputStats`.

        Raises:
          ValueError: ``x`` is not numeric, has fewer than 2 rows, holds NaN or
            inf, or ``bins`` is out of range.

        Examples:
          >>> stats = InputStats.from_data(np.array([[0.0], [0.0], [1.0], [1.0]]), bins=4)
          >>> stats.edges(0).tolist(), stats.proportions[0, :3].tolist()
          ([-inf, 0.0, 1.0, inf], [0.0, 0.5, 0.5])
        """
        bins = _checks.check_int("InputStats.from_data", "bins", bins, minimum=2, maximum=64)
        x = np.asarray(x)
        if x.dtype.kind not in "biuf" or x.ndim < 1 or len(x) < 2:
            raise ValueError(f"InputStats.from_data: x must be numbers of shape (n >= 2, ...), got {x.dtype} {x.shape}")
        shape = tuple(int(d) for d in x.shape[1:])
        total = math.prod(shape)
        stride = max(1, math.ceil(total / MAX_FEATURES))
        partial = cls(shape, stride, np.zeros((0, 0)), *[np.zeros(0)] * 5, count=0, sampled=0)
        sums, squares = 0.0, 0.0
        low, high = None, None
        for start in range(0, len(x), _CHUNK):
            chunk = partial.flatten(x[start : start + _CHUNK])
            if not np.all(np.isfinite(chunk)):
                raise ValueError("InputStats.from_data: x holds NaN or inf; expected finite inputs")
            sums = sums + chunk.sum(axis=0)
            squares = squares + np.square(chunk).sum(axis=0)
            low = chunk.min(axis=0) if low is None else np.minimum(low, chunk.min(axis=0))
            high = chunk.max(axis=0) if high is None else np.maximum(high, chunk.max(axis=0))
        n = len(x)
        mean = sums / n
        std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
        rows = np.unique(np.linspace(0, n - 1, min(n, MAX_ROWS)).round().astype(np.int64))
        sample = partial.flatten(x[rows])
        # inverted_cdf: every edge is an observed value, so a discrete feature gets no edge between its values.
        edges = np.quantile(sample, np.arange(1, bins) / bins, axis=0, method="inverted_cdf").T  # (F, bins - 1)
        repeated = np.zeros_like(edges, dtype=bool)
        repeated[:, 1:] = np.diff(edges, axis=1) <= 0
        inner = np.sort(np.where(repeated, np.inf, edges), axis=1)
        proportions = bin_counts(_bin(inner, sample), bins) / len(sample)
        return cls(shape, stride, inner, proportions, mean, std, low, high, count=n, sampled=len(sample))

    def to_json(self) -> dict:
        """The JSON-ready dict :meth:`save` writes (inner edges per feature without the +inf padding)."""
        return {
            "format": FORMAT,
            "version": self.version,
            "shape": list(self.shape),
            "stride": self.stride,
            "bins": self.bins,
            "count": self.count,
            "sampled": self.sampled,
            "floor": FLOOR,
            "edges": [row[np.isfinite(row)].tolist() for row in self.inner],
            "proportions": self.proportions.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON (atomically: a temporary file renamed over ``path``).

        Returns:
          ``path`` as a :class:`~pathlib.Path`.
        """
        path = Path(path)
        atomic_write(path, json.dumps(self.to_json(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> InputStats:
        """Read statistics that :meth:`save` wrote.

        Raises:
          FileNotFoundError: no file at ``path``.
          ValueError: the file is not such JSON, is malformed, or was written
            by a newer format version; the message names the file.

        Examples:
          >>> import pathlib, tempfile
          >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.stats.json"
          >>> _ = InputStats.from_data(np.arange(20.0).reshape(10, 2), bins=5).save(path)
          >>> InputStats.load(path).edges(1).tolist()
          [-inf, 3.0, 7.0, 11.0, 15.0, inf]
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"InputStats.load: {path} is not a valid input statistics file: {error}") from None

    @classmethod
    def from_json(cls, d) -> InputStats:
        """The inverse of :meth:`to_json`; ``ValueError`` for anything malformed or newer."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"no 'format': {FORMAT!r} field")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version must be a positive integer, got {version!r}")
        if version > VERSION:
            raise ValueError(f"written by a newer format version {version} (this hamjax reads up to {VERSION})")
        shape = tuple(_checks.check_int("InputStats", "shape", s, minimum=1) for s in d["shape"])
        stride = _checks.check_int("InputStats", "stride", d["stride"], minimum=1)
        bins = _checks.check_int("InputStats", "bins", d["bins"], minimum=2, maximum=64)
        features = len(range(0, math.prod(shape), stride))
        edges = d["edges"]
        if not isinstance(edges, list) or len(edges) != features:
            raise ValueError(f"edges must be a list of {features} lists")
        inner = np.full((features, bins - 1), np.inf)
        for f, row in enumerate(edges):
            row = np.asarray(row, np.float64)
            if row.ndim != 1 or len(row) > bins - 1 or not np.all(np.isfinite(row)) or np.any(np.diff(row) <= 0):
                raise ValueError(f"edges[{f}] must be at most {bins - 1} increasing finite numbers")
            inner[f, : len(row)] = row
        proportions = np.asarray(d["proportions"], np.float64)
        if proportions.shape != (features, bins) or np.any(proportions < 0):
            raise ValueError(f"proportions must be {features} rows of {bins} non-negative numbers")
        if not np.allclose(proportions.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError("every row of proportions must sum to 1")
        moments = {}
        for key in ("mean", "std", "min", "max"):
            moments[key] = np.asarray(d[key], np.float64)
            if moments[key].shape != (features,) or not np.all(np.isfinite(moments[key])):
                raise ValueError(f"{key} must be {features} finite numbers")
        count = _checks.check_int("InputStats", "count", d["count"], minimum=2)
        sampled = _checks.check_int("InputStats", "sampled", d["sampled"], minimum=2)
        return cls(shape, stride, inner, proportions, **moments, count=count, sampled=sampled, version=version)
