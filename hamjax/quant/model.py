"""Quantized models: post-training int8 (weight-only, dynamic, static) and QAT.

Both entry points work on any apply function through the interpreter of
:mod:`hamjax.jaxpr`, and take one :data:`METHODS` value as ``method``:
``"weight_only"`` (weights on their grid, activations float),
``"dynamic"`` (activations quantized from each batch's own range) or
``"static"`` (activations quantized with calibrated ranges).

* :func:`fake_quant_apply` is a function transform for quantization-aware
  training: at every site the weight is fake-quantized (per output channel
  by default) and so is the activation (with calibrated static ranges, or
  dynamically from the batch), all with straight-through gradients.
* :func:`quantize_model` converts a trained float model into the pair
  ``(qapply, qparams)``: ``qparams["weights"]`` holds the params with
  :class:`hamjax.quant.QTensor` (int8 codes, scales, zero points) at every
  weight leaf, ``qparams["activations"]`` the calibrated ``(lo, hi)`` of
  every site (static method). ``qapply(qparams, x)`` runs the quantized model
  in JAX: weights dequantized from their codes, activations snapped onto
  their int8 grid. An exporter reads what it needs per op from
  :meth:`QuantizedApply.site_table`.

The JAX model computes in float32 on integer grids, which equals integer
arithmetic up to float32 rounding of the accumulation; XLA:CPU has no
faster int8 matrix product, so the speed of int8 shows in onnxruntime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from hamjax._checks import check_choice
from hamjax.jaxpr import Site, find_sites, intercept, weight_channel_axes
from hamjax.quant.calibration import CALIBRATION_METHODS, as_arrays, calibrate, calibration_inputs, check_batches
from hamjax.quant.numerics import check_bits, compute_qparams, fake_quant
from hamjax.quant.weights import dequantize_tree, is_qtensor, quantize_params

METHODS = ("weight_only", "dynamic", "static")
"""What :func:`quantize_model` and :func:`fake_quant_apply` quantize: weights only, or activations too."""


def _site_hook(
    *,
    bits,
    symmetric: bool,
    per_channel: bool,
    method: str,
    act_bits,
    act_symmetric: bool,
    ranges,
    weight_at_op,
    skip: frozenset,
):
    """The hook that fake-quantizes weights (where ``weight_at_op(site)``) and activations at each site."""

    def hook(i, site: Site, a, w):
        del i
        if site.name in skip:
            return a, w
        if weight_at_op(site):
            axes = site.channel_axes if per_channel else None
            w = fake_quant(w, bits=bits, symmetric=symmetric, channel_axes=axes)
        if method == "dynamic":
            a = fake_quant(a, bits=act_bits, symmetric=act_symmetric)
        elif method == "static":
            if site.name not in ranges:
                raise ValueError(f"no activation range for site {site.name}; calibrate on this apply_fn first")
            lo, hi = ranges[site.name][0], ranges[site.name][1]
            a = fake_quant(a, bits=act_bits, symmetric=act_symmetric, lo=lo, hi=hi)
        return a, w

    return hook


def fake_quant_apply(
    apply_fn,
    *,
    bits=8,
    act_bits=8,
    method: str = "static",
    ranges=None,
    per_channel: bool = True,
    symmetric: bool = True,
    act_symmetric: bool = False,
    skip: Iterable[str] = (),
):
    """A function transform for quantization-aware training.

    Every site's weight is fake-quantized from its own range (per output
    channel unless ``per_channel=False``) and its activation either with
    fixed calibrated ranges (``"static"``), from the batch (``"dynamic"``)
    or not at all (``"weight_only"``). Gradients are straight-through
    (zero where a value was clipped). An :class:`hamjax.ApplyFn` stays one,
    so :func:`hamjax.fit` trains the result directly.

    Args:
      apply_fn: any apply function of the contract.
      bits: weight bit width in [2, 16] (may be traced).
      act_bits: activation bit width in [2, 16] (may be traced).
      method: one of :data:`METHODS`: how activations are quantized.
      ranges: for ``"static"``: ``{site name: (lo, hi)}`` from
        :func:`hamjax.quant.calibrate` (kept fixed during training).
      per_channel, symmetric: weight quantization.
      act_symmetric: symmetric activations (asymmetric is the default).
      skip: site names left in floating point.

    Returns:
      The fake-quantized apply function.

    Raises:
      ValueError: bad bits or method, or ``"static"`` without ``ranges``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import quant
      >>> f = lambda p, x: jnp.tanh(x @ p["w"])
      >>> params, x = {"w": jnp.linspace(-1, 1, 12).reshape(4, 3)}, jnp.ones((2, 4))
      >>> qat = quant.fake_quant_apply(f, bits=4, method="dynamic")
      >>> jax.grad(lambda p: qat(p, x).sum())(params)["w"].shape
      (4, 3)
    """
    check_bits("fake_quant_apply", "bits", bits)
    check_bits("fake_quant_apply", "act_bits", act_bits)
    check_choice("fake_quant_apply", "method", method, METHODS)
    if method == "static" and ranges is None:
        raise ValueError("fake_quant_apply: method='static' needs ranges (from hamjax.quant.calibrate)")
    hook = _site_hook(
        bits=bits,
        symmetric=symmetric,
        per_channel=per_channel,
        method=method,
        act_bits=act_bits,
        act_symmetric=act_symmetric,
        ranges=ranges,
        weight_at_op=lambda site: True,
        skip=frozenset(skip),
    )
    return intercept(apply_fn, hook)


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedApply:
    """The apply function of a quantized model: ``qapply(qparams, x, **kw) -> y``.

    Attributes:
      apply_fn: the float model's apply function.
      sites: every quantizable op, in evaluation order.
      method: one of :data:`METHODS`.
      bits, symmetric, per_channel: how weights are quantized.
      act_bits, act_symmetric: how activations are quantized.
      stored: the weight leaves stored as :class:`hamjax.quant.QTensor`; the
        weights of other sites are fake-quantized at the op.
      skip: site names left in floating point.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> f = lambda p, x: x @ p["w"]
      >>> qapply, qparams = quant.quantize_model(f, {"w": jnp.eye(3)}, method="weight_only", example=jnp.ones((1, 3)))
      >>> qapply.method, [s.name for s in qapply.sites], qapply(qparams, jnp.ones((1, 3))).tolist()
      ('weight_only', ["['w']"], [[1.0, 1.0, 1.0]])
    """

    apply_fn: Any
    sites: tuple[Site, ...]
    method: str
    bits: int = 8
    symmetric: bool = True
    per_channel: bool = True
    act_bits: int = 8
    act_symmetric: bool = False
    stored: frozenset = frozenset()
    skip: frozenset = frozenset()

    def __call__(self, qparams, x, **kw):
        weights = dequantize_tree(qparams["weights"])
        hook = _site_hook(
            bits=self.bits,
            symmetric=self.symmetric,
            per_channel=self.per_channel,
            method=self.method,
            act_bits=self.act_bits,
            act_symmetric=self.act_symmetric,
            ranges=qparams.get("activations", {}),
            weight_at_op=lambda site: site.leaf not in self.stored,
            skip=self.skip,
        )
        return intercept(self.apply_fn, hook)(weights, x, **kw)

    def site_table(self, qparams) -> list[dict]:
        """Per quantized op, what an exporter needs.

        Returns:
          One dict per site (skipped sites left out) with ``name``,
          ``primitive``, ``leaf``, ``weight_operand``, ``channel_axes``,
          ``weight`` (the :class:`hamjax.quant.QTensor`, or ``None`` when the
          weight is quantized at the op), ``activation`` (``(scale,
          zero_point)`` float32 arrays for the static method, else ``None``) and
          ``site`` (the :class:`hamjax.jaxpr.Site`).
        """
        leaves = {
            jax.tree_util.keystr(p): x
            for p, x in jax.tree_util.tree_leaves_with_path(qparams["weights"], is_leaf=is_qtensor)
        }
        rows = []
        for s in self.sites:
            if s.name in self.skip:
                continue
            act = None
            if self.method == "static":
                lo, hi = qparams["activations"][s.name]
                act = compute_qparams(lo, hi, bits=self.act_bits, symmetric=self.act_symmetric)
            rows.append(
                {
                    "name": s.name,
                    "primitive": s.primitive,
                    "leaf": s.leaf,
                    "weight_operand": s.weight_operand,
                    "channel_axes": s.channel_axes,
                    "weight": leaves.get(s.leaf) if s.leaf in self.stored else None,
                    "activation": act,
                    "site": s,
                }
            )
        return rows


def _example(example, batches):
    if example is not None:
        return example
    if batches is not None:
        return calibration_inputs(batches[:1], "quantize_model")[0]
    raise ValueError("quantize_model: pass example= (an input batch) or calibration batches")


def _check_ranges(ranges, sites) -> None:
    """Every active site has a finite ``(lo, hi)`` with ``lo <= hi``; raised before anything is traced."""
    for s in sites:
        if s.name not in ranges:
            raise ValueError(f"quantize_model: ranges has no entry for site {s.name}; sites: {[t.name for t in sites]}")
        lo, hi = (float(v) for v in np.asarray(ranges[s.name], np.float64).reshape(2))
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise ValueError(f"quantize_model: the range of site {s.name} must be finite with lo <= hi, got {(lo, hi)}")


def quantize_model(
    apply_fn,
    params,
    *,
    method: str = "static",
    bits: int = 8,
    per_channel: bool = True,
    symmetric: bool = True,
    act_bits: int = 8,
    act_symmetric: bool = False,
    calibration: Iterable | None = None,
    calibration_method: str = "mse",
    percentile: float = 99.99,
    ranges=None,
    example=None,
    skip: Iterable[str] = (),
    **kw,
) -> tuple[QuantizedApply, dict]:
    """Post-training quantization of any model into ``(qapply, qparams)``.

    Args:
      apply_fn: any apply function of the contract.
      params: its float params.
      method: one of :data:`METHODS`: ``"weight_only"`` (int weights,
        float activations), ``"dynamic"`` (activations quantized per batch
        on the fly) or ``"static"`` (activation ranges calibrated once).
      bits: weight bit width, concrete, in [2, 16] (int4 codes are stored
        one per int8 byte).
      per_channel: one weight scale per output channel (else per tensor).
      symmetric: symmetric weights (zero point 0).
      act_bits, act_symmetric: activation quantization.
      calibration: static method: a few batches (arrays or ``(x, y)`` pairs).
      calibration_method, percentile: how ranges are calibrated, one of
        :data:`hamjax.quant.CALIBRATION_METHODS` (see :func:`hamjax.quant.calibrate`).
      ranges: static method: precomputed ``{site: (lo, hi)}`` instead of
        ``calibration``.
      example: an input batch, for methods without calibration.
      skip: site names to keep in floating point (for example the first
        and last layers).
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      ``(qapply, qparams)``; ``qparams`` is the pytree
      ``{"weights": ..., "activations": {site: float32[2]}}`` (orbax saves it;
      its bytes are the int8 storage).

    Raises:
      ValueError: bad method or bits, static method without calibration data,
        empty calibration data, non-finite ranges, unknown skipped sites.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import quant
      >>> f = lambda p, x: jnp.maximum(x @ p["w1"], 0.0) @ p["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (8, 16)), "w2": jax.random.normal(k2, (16, 4))}
      >>> x = jax.random.normal(k3, (32, 8))
      >>> qapply, qparams = quant.quantize_model(f, params, calibration=[x])
      >>> qparams["weights"]["w1"].values.dtype.name
      'int8'
      >>> bool(jnp.mean(jnp.argmax(qapply(qparams, x), -1) == jnp.argmax(f(params, x), -1)) > 0.9)
      True
    """
    check_choice("quantize_model", "method", method, METHODS)
    check_choice("quantize_model", "calibration_method", calibration_method, CALIBRATION_METHODS)
    check_bits("quantize_model", "bits", bits)
    check_bits("quantize_model", "act_bits", act_bits)
    batches = list(check_batches("quantize_model", "calibration", calibration)) if calibration is not None else None
    if method == "static" and batches is None and ranges is None:
        raise ValueError("quantize_model: method='static' needs calibration batches or ranges")
    sites = find_sites(apply_fn, params, _example(example, batches), **kw)
    skip = frozenset(skip)
    unknown = skip - {s.name for s in sites}
    if unknown:
        raise ValueError(
            f"quantize_model: skip names unknown sites {sorted(unknown)}; sites: {[s.name for s in sites]}"
        )
    if method == "static" and ranges is not None:
        _check_ranges(ranges, [s for s in sites if s.name not in skip])
    if method == "static" and ranges is None:
        ranges = calibrate(
            apply_fn,
            params,
            batches,
            method=calibration_method,
            percentile=percentile,
            bits=act_bits,
            symmetric=act_symmetric,
            **kw,
        )
    active = [s for s in sites if s.name not in skip]
    axes = weight_channel_axes(active)
    shared = {s.leaf for s in sites if s.name in skip}
    if per_channel:
        stored = frozenset(leaf for leaf in axes if leaf not in shared)
    else:
        stored = frozenset(s.leaf for s in active if s.leaf is not None and s.leaf not in shared)
    weights = params
    if stored:
        weights = quantize_params(
            params,
            bits=bits,
            symmetric=symmetric,
            per_channel=per_channel,
            filter=lambda p, x: jax.tree_util.keystr(p) in stored,
            channel_axes=axes,
        )
    qparams = {"weights": weights, "activations": as_arrays(ranges) if method == "static" else {}}
    qapply = QuantizedApply(
        apply_fn, sites, method, int(bits), symmetric, per_channel, int(act_bits), act_symmetric, stored, skip
    )
    return qapply, qparams
