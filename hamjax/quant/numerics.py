"""Quantization arithmetic: ranges, scales and zero points, fake-quant with straight-through gradients.

Uniform affine quantization maps a real ``x`` to an integer ``q`` with a
scale ``s`` and a zero point ``z``::

    q = clip(round(x / s) + z, qmin, qmax)        x_hat = (q - z) * s

Symmetric quantization fixes ``z = 0`` and uses the narrow signed range
``[-(2^(b-1) - 1), 2^(b-1) - 1]`` so that ``+a`` and ``-a`` map to the same
magnitude; asymmetric quantization uses ``[-2^(b-1), 2^(b-1) - 1]`` and a
zero point that makes ``0.0`` exact (padding and ReLU outputs stay exact).
Per-channel quantization keeps one ``(s, z)`` per slice along
``channel_axes`` (scales have the operand's rank, size 1 on reduced axes).

Bit widths may be traced arrays, so ``jax.vmap`` over a vector of bit
widths is one call; they are checked to lie in [2, 16] when concrete.

This module is the arithmetic; :mod:`hamjax.quant.weights` stores params
as integers, :mod:`hamjax.jaxpr` finds which operands of which ops to
quantize in any apply function, and :mod:`hamjax.quant.calibration`
estimates activation ranges.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018.
  Bengio et al., "Estimating or Propagating Gradients Through Stochastic
  Neurons", 2013 (the straight-through estimator).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import is_traced

MIN_BITS = 2
"""The narrowest bit width: codes in {-1, 0, 1} (symmetric) or {-2, ..., 1}."""

MAX_BITS = 16
"""The widest bit width (codes stored as int16)."""

_EPS = 1e-12


def check_bits(where: str, arg: str, value) -> jax.Array:
    """``value`` as a float32 scalar array, checked to be an integer in [2, 16] when concrete.

    A traced ``value`` (a bit width under ``jax.vmap``) passes unchecked; its
    range is the caller's contract. Integral floats (``8.0``) are accepted.

    Args:
      where: the calling function, for the error message.
      arg: the argument's name, for the error message (``"bits"``, ``"act_bits"``).
      value: a Python number or a scalar array.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: a ``value`` that is not a scalar, or a concrete one outside
        [2, 16] or not an integer.

    Examples:
      >>> from hamjax import quant
      >>> float(quant.check_bits("fake_quant", "bits", 4))
      4.0
      >>> quant.check_bits("fake_quant", "bits", 17)
      Traceback (most recent call last):
      ...
      ValueError: fake_quant: bits must be an integer in [2, 16], got 17
    """
    if isinstance(value, bool | str | bytes) or jnp.ndim(value) != 0:
        raise ValueError(f"{where}: {arg} must be a scalar integer in [{MIN_BITS}, {MAX_BITS}], got {value!r}")
    if not is_traced(value):
        v = float(np.asarray(value))
        if not (MIN_BITS <= v <= MAX_BITS) or v != round(v):
            raise ValueError(f"{where}: {arg} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {value!r}")
    return jnp.asarray(value, jnp.float32)


def storage_dtype(bits: int) -> np.dtype:
    """The integer dtype that stores ``bits``-bit values: int8 up to 8 bits, else int16.

    Args:
      bits: a concrete bit width.

    Returns:
      ``np.dtype(np.int8)`` or ``np.dtype(np.int16)``.

    Examples:
      >>> from hamjax import quant
      >>> quant.storage_dtype(4).name, quant.storage_dtype(12).name
      ('int8', 'int16')
    """
    return np.dtype(np.int8) if int(bits) <= 8 else np.dtype(np.int16)


def qrange(bits, *, symmetric: bool = True) -> tuple[jax.Array, jax.Array]:
    """The integer range ``(qmin, qmax)`` as float32 scalars.

    Args:
      bits: bit width, a scalar (may be traced).
      symmetric: the narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` if
        ``True``, else the full signed range ``[-2^(b-1), 2^(b-1) - 1]``.

    Returns:
      ``(qmin, qmax)``.

    Examples:
      >>> from hamjax import quant
      >>> [float(v) for v in quant.qrange(8)], [float(v) for v in quant.qrange(8, symmetric=False)]
      ([-127.0, 127.0], [-128.0, 127.0])
    """
    # XLA's float32 exp2 is not exact at every integer (2^15 comes out as 32767.98), so round:
    # the range ends must be integers or the clipped codes leave the grid.
    half = jnp.round(jnp.exp2(jnp.asarray(bits, jnp.float32) - 1.0))
    qmax = half - 1.0
    qmin = -qmax if symmetric else -half
    return qmin, qmax


def compute_qparams(lo, hi, *, bits=8, symmetric: bool = True) -> tuple[jax.Array, jax.Array]:
    """Scale and zero point that cover the real range ``[lo, hi]``.

    The range is first widened to contain 0. Symmetric: ``s = max(|lo|,
    |hi|) / qmax``, ``z = 0``. Asymmetric: ``s = (hi - lo) / (qmax - qmin)``,
    ``z = round(qmin - lo / s)``. A zero-width range gets a tiny positive
    scale, so everything quantizes to ``z`` and dequantizes to 0.

    Args:
      lo, hi: arrays of the same shape (per-tensor scalars or per-channel).
      bits: bit width (may be traced).
      symmetric: see :func:`qrange`.

    Returns:
      ``(scale, zero_point)`` as float32 arrays of ``lo``'s shape; the zero
      point holds integer values.

    Raises:
      ValueError: concrete ``lo`` or ``hi`` that are not finite, or ``lo > hi``.

    Examples:
      >>> from hamjax import quant
      >>> s, z = quant.compute_qparams(-1.0, 3.0, bits=8, symmetric=False)
      >>> round(float(s) * 255, 4), float(z)
      (4.0, -64.0)
    """
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    if not is_traced(lo) and not is_traced(hi):
        if not (np.all(np.isfinite(np.asarray(lo))) and np.all(np.isfinite(np.asarray(hi)))):
            raise ValueError(f"compute_qparams: ranges must be finite, got lo={lo}, hi={hi}")
        if np.any(np.asarray(lo) > np.asarray(hi)):
            raise ValueError(f"compute_qparams: lo must be <= hi, got lo={lo}, hi={hi}")
    qmin, qmax = qrange(bits, symmetric=symmetric)
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    if symmetric:
        scale = jnp.maximum(jnp.maximum(-lo, hi) / qmax, _EPS)
        return scale, jnp.zeros_like(scale)
    scale = jnp.maximum((hi - lo) / (qmax - qmin), _EPS)
    zero_point = jnp.clip(jnp.round(qmin - lo / scale), qmin, qmax)
    return scale, zero_point


def quantize(x, scale, zero_point, *, bits=8, symmetric: bool = True) -> jax.Array:
    """Integer codes of ``x`` (as float32 values): ``clip(round(x / s) + z, qmin, qmax)``.

    Args:
      x: array (any float dtype).
      scale, zero_point: broadcastable to ``x`` (from :func:`compute_qparams`).
      bits: bit width (may be traced).
      symmetric: the range convention of :func:`qrange`.

    Returns:
      float32 array of integers in ``[qmin, qmax]``, ``x``'s shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> quant.quantize(jnp.array([-1.0, 0.26, 9.0]), 0.5, 0.0, bits=4).tolist()
      [-2.0, 1.0, 7.0]
    """
    qmin, qmax = qrange(bits, symmetric=symmetric)
    return jnp.clip(jnp.round(x.astype(jnp.float32) / scale) + zero_point, qmin, qmax)


def dequantize(q, scale, zero_point, dtype=jnp.float32) -> jax.Array:
    """Real values of integer codes: ``(q - z) * s`` in ``dtype``.

    Args:
      q: integer codes (any numeric dtype).
      scale, zero_point: broadcastable to ``q``.
      dtype: the result's dtype.

    Returns:
      An array of ``q``'s shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> quant.dequantize(jnp.array([-2, 1, 7], jnp.int8), 0.5, 0.0).tolist()
      [-1.0, 0.5, 3.5]
    """
    return ((jnp.asarray(q, jnp.float32) - zero_point) * scale).astype(dtype)


def _axes(ndim: int, channel_axes: Sequence[int] | int | None) -> tuple[int, ...]:
    """The reduced axes: everything except ``channel_axes`` (normalised, checked)."""
    if channel_axes is None:
        return tuple(range(ndim))
    if isinstance(channel_axes, int):
        channel_axes = (channel_axes,)
    kept = set()
    for a in channel_axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"channel_axes {tuple(channel_axes)} out of range for an array of rank {ndim}")
        kept.add(a % ndim)
    return tuple(i for i in range(ndim) if i not in kept)


def minmax(x, channel_axes: Sequence[int] | int | None = None) -> tuple[jax.Array, jax.Array]:
    """Min and max of ``x`` over every axis except ``channel_axes`` (kept with size 1 on the others).

    Args:
      x: an array.
      channel_axes: axes kept (per-channel ranges); ``None`` reduces every axis.

    Returns:
      ``(lo, hi)`` as float32 arrays of ``x``'s rank.

    Raises:
      ValueError: an axis out of range for ``x``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> lo, hi = quant.minmax(jnp.array([[1.0, -2.0], [3.0, 0.5]]), channel_axes=-1)
      >>> lo.tolist(), hi.tolist()
      ([[1.0, -2.0]], [[3.0, 0.5]])
    """
    axes = _axes(x.ndim, channel_axes)
    x = x.astype(jnp.float32)
    return jnp.min(x, axis=axes, keepdims=True), jnp.max(x, axis=axes, keepdims=True)


def fake_quant(
    x,
    *,
    bits=8,
    symmetric: bool = True,
    channel_axes: Sequence[int] | int | None = None,
    lo=None,
    hi=None,
) -> jax.Array:
    """Quantize and dequantize ``x``, with a straight-through gradient.

    Forward: ``(clip(round(x / s) + z, qmin, qmax) - z) * s``. Backward: the
    clipped straight-through estimator, gradient 1 where ``x`` lies inside
    the representable range and 0 where it was clipped.

    Args:
      x: float array of any shape; the result has its dtype.
      bits: bit width in [2, 16] (may be traced, for example under ``vmap``).
      symmetric: symmetric (``z = 0``) or asymmetric quantization.
      channel_axes: axes with their own scale (per-channel); ``None`` is
        per-tensor. Only used when the range comes from ``x``.
      lo, hi: a fixed range (static activation quantization); when omitted
        the range is ``x``'s own min and max (weights, dynamic activations),
        which receive no gradient.

    Returns:
      An array like ``x`` on the quantization grid.

    Raises:
      ValueError: ``bits`` outside [2, 16], or an integer ``x``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import quant
      >>> x = jnp.array([-1.0, 0.1, 0.5, 2.0])
      >>> quant.fake_quant(x, bits=2).tolist()
      [0.0, 0.0, 0.0, 2.0]
      >>> jax.grad(lambda x: quant.fake_quant(x, bits=8, lo=-1.0, hi=1.0).sum())(x).tolist()
      [1.0, 1.0, 1.0, 0.0]
    """
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"fake_quant: x must be a floating array, got dtype {jnp.result_type(x)}")
    bits = check_bits("fake_quant", "bits", bits)
    if (lo is None) != (hi is None):
        raise ValueError("fake_quant: give both lo and hi, or neither")
    if lo is None:
        lo, hi = jax.lax.stop_gradient(minmax(x, channel_axes))
    scale, zero_point = compute_qparams(lo, hi, bits=bits, symmetric=symmetric)
    qmin, qmax = qrange(bits, symmetric=symmetric)
    x32 = x.astype(jnp.float32)
    low, high = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    # Gradient 1 on the closed representable range, 0 outside (clip alone gives 0.5 at its ends).
    inside = jnp.where((x32 >= low) & (x32 <= high), x32, jax.lax.stop_gradient(jnp.clip(x32, low, high)))
    snapped = dequantize(quantize(x32, scale, zero_point, bits=bits, symmetric=symmetric), scale, zero_point)
    return (inside + jax.lax.stop_gradient(snapped - inside)).astype(x.dtype)
