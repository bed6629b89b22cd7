"""Calibration: activation ranges at every quantized op, from a few batches.

Static int8 quantization fixes each activation's scale and zero point
ahead of time. The statistics are collected at the input of every site
that :func:`hamjax.jaxpr.find_sites` finds, on any apply function,
by evaluating its jaxpr with a recording hook (jitted, one call per batch).

Methods (:data:`CALIBRATION_METHODS`):

* ``"minmax"``: the smallest and largest values seen.
* ``"percentile"``: the ``(100 - p)``-th and ``p``-th percentiles, which
  drops rare outliers (read from a 2048-bin histogram over the min-max range).
* ``"mse"``: the clipping range whose quantization grid minimises the mean
  squared error over the observed distribution (searched on the histogram,
  with each end of the range shrunk independently; symmetric ranges shrink
  together).

References:
  Wu et al., "Integer Quantization for Deep Learning Inference: Principles
  and Empirical Evaluation", 2020 (max, percentile and MSE calibration).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_choice, check_int, check_number
from hamjax.jaxpr import find_sites, intercept
from hamjax.quant.numerics import check_bits

CALIBRATION_METHODS = ("minmax", "percentile", "mse")
"""How :func:`calibrate` turns observed activations into ranges."""

Ranges = dict[str, tuple[float, float]]


def check_batches(where: str, arg: str, batches: Any) -> Iterable:
    """``batches`` unchanged, or raises when it is a single array rather than a sequence of batches.

    Iterating an array yields its rows, so an array passed where a list of
    batches belongs would be calibrated one example at a time, each row
    missing its batch dimension.

    Args:
      where: the calling function, for error messages.
      arg: the argument's name, for error messages.
      batches: what was passed as the calibration batches.

    Returns:
      ``batches``.

    Examples:
      >>> import numpy as np
      >>> from hamjax import quant
      >>> quant.check_batches("calibrate", "batches", np.ones((8, 3)))
      Traceback (most recent call last):
      ...
      ValueError: calibrate: batches must be a list of batches, got a single array of shape (8, 3); pass [x] for one batch
    """
    if hasattr(batches, "shape") and hasattr(batches, "dtype"):
        raise ValueError(
            f"{where}: {arg} must be a list of batches, got a single array of shape {tuple(batches.shape)}; "
            "pass [x] for one batch"
        )
    return batches


def calibration_inputs(batches: Iterable, where: str = "calibrate", arg: str = "batches") -> list:
    """The input arrays of ``batches`` (arrays, or ``(x, y)`` pairs), materialised and checked.

    Args:
      batches: an iterable of floating arrays or ``(x, y)`` pairs (a generator is read once).
      where: the calling function, for error messages.
      arg: the argument's name, for error messages.

    Returns:
      A list of the input arrays.

    Raises:
      ValueError: a single array instead of a list of batches (:func:`check_batches`),
        no batch, or a batch that is not a non-empty floating array.

    Examples:
      >>> import numpy as np
      >>> from hamjax import quant
      >>> [x.shape for x in quant.calibration_inputs([(np.ones((4, 3)), np.zeros(4)), np.ones((2, 3))])]
      [(4, 3), (2, 3)]
    """
    out = []
    for b in check_batches(where, arg, batches):
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not hasattr(x, "shape") or not jnp.issubdtype(jnp.result_type(x), jnp.floating) or np.size(x) == 0:
            raise ValueError(f"{where}: every batch must be a non-empty floating array (or (x, y)), got {type(x)}")
        out.append(x)
    if not out:
        raise ValueError(f"{where}: no calibration batches; pass at least one batch of inputs")
    return out


def _recorder(apply_fn, stat, kw: dict):
    """A jitted ``fn(params, x, *args) -> [stat(activation, i, *args) for each site]``."""

    def fn(params, x, *args):
        records = []

        def hook(i, site, a, w):
            records.append(stat(a, i, *args))
            return a, w

        intercept(apply_fn, hook)(params, x, **kw)
        return records

    return jax.jit(fn)


def collect_minmax(apply_fn, params, batches: Iterable, **kw) -> Ranges:
    """Min and max of each site's activation over all ``batches``.

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      batches: input arrays or ``(x, y)`` pairs.
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      ``{site name: (min, max)}`` as Python floats.

    Raises:
      ValueError: empty ``batches``, or a non-finite activation.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> f = lambda p, x: x @ p["w"]
      >>> quant.collect_minmax(f, {"w": jnp.ones((2, 2))}, [jnp.array([[-1.0, 3.0]]), jnp.array([[0.5, 4.0]])])
      {"['w']": (-1.0, 4.0)}
    """
    xs = calibration_inputs(batches, "collect_minmax")
    sites = find_sites(apply_fn, params, xs[0], **kw)
    record = _recorder(apply_fn, lambda a, i: jnp.stack([jnp.min(a), jnp.max(a)]).astype(jnp.float32), kw)
    lo = np.full(len(sites), np.inf)
    hi = np.full(len(sites), -np.inf)
    for x in xs:
        stats = np.asarray(jax.device_get(record(params, x)))
        lo, hi = np.minimum(lo, stats[:, 0]), np.maximum(hi, stats[:, 1])
    for s, a, b in zip(sites, lo, hi, strict=True):
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"calibrate: the activation at site {s.name} has a non-finite range [{a}, {b}]")
    return {s.name: (float(a), float(b)) for s, a, b in zip(sites, lo, hi, strict=True)}


def collect_histograms(apply_fn, params, batches: Iterable, ranges: Ranges, *, num_bins: int = 2048, **kw) -> dict:
    """Histograms of each site's activation over ``ranges`` (values outside are counted in the end bins).

    Args:
      apply_fn: any apply function of the contract.
      params: its params.
      batches: input arrays or ``(x, y)`` pairs.
      ranges: ``{site name: (lo, hi)}``, as :func:`collect_minmax` returns.
      num_bins: bins per site, evenly spaced over its range.
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      ``{site name: counts}``, float64 arrays of ``num_bins``, in site order.

    Raises:
      ValueError: ``ranges`` lacks a site of ``apply_fn``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> f = lambda p, x: x @ p["w"]
      >>> hists = quant.collect_histograms(f, {"w": jnp.ones((4, 2))}, [jnp.arange(8.0).reshape(2, 4)],
      ...                                  {"['w']": (0.0, 8.0)}, num_bins=4)
      >>> hists["['w']"].tolist()
      [2.0, 2.0, 2.0, 2.0]
    """
    xs = calibration_inputs(batches, "collect_histograms")
    # The hook indexes sites by position, so read the ranges in site order, whatever order the dict has.
    names = [s.name for s in find_sites(apply_fn, params, xs[0], **kw)]
    missing = [n for n in names if n not in ranges]
    if missing:
        raise ValueError(f"collect_histograms: ranges lack the sites {missing}; expected a range for each of {names}")
    los = jnp.asarray([ranges[n][0] for n in names], jnp.float32)
    his = jnp.asarray([ranges[n][1] for n in names], jnp.float32)

    def hist(a, i, los, his):
        width = jnp.maximum(his[i] - los[i], 1e-12)
        idx = jnp.clip(jnp.floor((a.astype(jnp.float32) - los[i]) / width * num_bins), 0, num_bins - 1)
        return jnp.bincount(idx.astype(jnp.int32).ravel(), length=num_bins)

    record = _recorder(apply_fn, hist, kw)
    counts = np.zeros((len(names), num_bins))
    for x in xs:
        counts += np.asarray(jax.device_get(record(params, x, los, his)), np.float64)
    return dict(zip(names, counts, strict=True))


def _percentile_range(counts, lo, hi, p: float, symmetric: bool) -> tuple[float, float]:
    edges = np.linspace(lo, hi, len(counts) + 1)
    cdf = np.cumsum(counts) / counts.sum()
    tail = 1.0 - p / 100.0
    a = edges[np.searchsorted(cdf, tail, side="left")]
    b = edges[min(np.searchsorted(cdf, 1.0 - tail, side="left") + 1, len(counts))]
    if symmetric:
        m = max(abs(a), abs(b))
        return -m, m
    return float(min(a, 0.0)), float(max(b, 0.0))


def _grid_error(centers, counts, lo, hi, bits: int, symmetric: bool) -> np.ndarray:
    """Expected squared quantization error of the histogram for arrays of candidate ranges."""
    qmin, qmax = (-(2 ** (bits - 1)) + 1 if symmetric else -(2 ** (bits - 1))), 2 ** (bits - 1) - 1
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        scale = np.maximum(np.maximum(-lo, hi) / qmax, 1e-12)
        zero = np.zeros_like(scale)
    else:
        scale = np.maximum((hi - lo) / (qmax - qmin), 1e-12)
        zero = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    q = np.clip(np.round(centers[None] / scale[:, None]) + zero[:, None], qmin, qmax)
    err = (q - zero[:, None]) * scale[:, None] - centers[None]
    return (err**2 * counts[None]).sum(axis=1)


def _mse_range(counts, lo, hi, bits: int, symmetric: bool, steps: int = 64) -> tuple[float, float]:
    edges = np.linspace(lo, hi, len(counts) + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fractions = np.linspace(1.0 / steps, 1.0, steps)
    if symmetric:
        m = max(abs(lo), abs(hi)) * fractions
        best = int(np.argmin(_grid_error(centers, counts, -m, m, bits, True)))
        return float(-m[best]), float(m[best])
    a, b = np.meshgrid(min(lo, 0.0) * fractions, max(hi, 0.0) * fractions, indexing="ij")
    err = _grid_error(centers, counts, a.ravel(), b.ravel(), bits, False)
    best = int(np.argmin(err))
    return float(a.ravel()[best]), float(b.ravel()[best])


def calibrate(
    apply_fn,
    params,
    batches: Iterable,
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    bits: int = 8,
    symmetric: bool = False,
    num_bins: int = 2048,
    **kw,
) -> Ranges:
    """Activation ranges ``{site name: (lo, hi)}`` for static quantization.

    Args:
      apply_fn: any apply function of the contract.
      params: its params (float; quantized weights should be dequantized first).
      batches: a few batches of inputs (arrays or ``(x, y)`` pairs).
      method: one of :data:`CALIBRATION_METHODS`.
      percentile: for ``"percentile"``, in (50, 100].
      bits: the activation bit width the ``"mse"`` search targets.
      symmetric: whether activations will be quantized symmetrically.
      num_bins: histogram bins for ``"percentile"`` and ``"mse"``.
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      A dict from site name to a ``(lo, hi)`` pair of floats.

    Raises:
      ValueError: an unknown method, bad percentile or bits, empty batches,
        or a non-finite activation range.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> f = lambda p, x: jnp.maximum(x @ p["w1"], 0.0) @ p["w2"]
      >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 2))}
      >>> ranges = quant.calibrate(f, params, [jnp.array([[-1.0, 0.0, 2.0], [0.0, -3.0, 0.0]])])
      >>> ranges
      {"['w1']": (-3.0, 2.0), "['w2']": (0.0, 1.0)}
    """
    check_choice("calibrate", "method", method, CALIBRATION_METHODS)
    check_number("calibrate", "percentile", percentile, minimum=50, exclusive_minimum=True, maximum=100)
    check_bits("calibrate", "bits", bits)
    check_int("calibrate", "num_bins", num_bins, minimum=16)
    xs = calibration_inputs(batches)
    ranges = collect_minmax(apply_fn, params, xs, **kw)
    if method == "minmax":
        return ranges
    hists = collect_histograms(apply_fn, params, xs, ranges, num_bins=num_bins, **kw)
    out = {}
    for name, (lo, hi) in ranges.items():
        if hi <= lo:
            out[name] = (lo, hi)
        elif method == "percentile":
            out[name] = _percentile_range(hists[name], lo, hi, percentile, symmetric)
        else:
            out[name] = _mse_range(hists[name], lo, hi, int(bits), symmetric)
    return out


def as_arrays(ranges: Ranges) -> dict[str, Any]:
    """``ranges`` as float32 arrays of shape (2,), the form quantized params carry.

    Args:
      ranges: ``{site name: (lo, hi)}``.

    Returns:
      ``{site name: float32[2]}``.

    Examples:
      >>> from hamjax import quant
      >>> {k: v.tolist() for k, v in quant.as_arrays({"['w']": (-1.0, 2.5)}).items()}
      {"['w']": [-1.0, 2.5]}
    """
    return {k: jnp.asarray(v, jnp.float32) for k, v in ranges.items()}
