"""Quantization arithmetic: fake-quant with straight-through gradients, int storage.

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

This module is the arithmetic; :mod:`hamjax.jaxpr` finds which
operands of which ops to quantize in any apply function, and
:mod:`hamjax.calibrate` estimates activation ranges.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018.
  Bengio et al., "Estimating or Propagating Gradients Through Stochastic
  Neurons", 2013 (the straight-through estimator).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import Transform
from hamjax._select import Filter, resolve_filter

Params = Any
MIN_BITS, MAX_BITS = 2, 16
_EPS = 1e-12


def check_bits(name: str, bits, arg: str = "bits") -> jax.Array:
    """``bits`` as a float32 scalar array, checked to be an integer in [2, 16] when concrete.

    Args:
      name: the calling function, for the error message.
      bits: a Python number or a scalar array (traced arrays are not checked).
      arg: the argument's name, for the error message.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: a concrete ``bits`` outside [2, 16], not an integer, or not a scalar.
    """
    if jnp.ndim(bits) != 0:
        raise ValueError(f"{name}: {arg} must be a scalar, got shape {jnp.shape(bits)}")
    if not isinstance(bits, jax.core.Tracer):
        value = float(np.asarray(bits))
        if not (MIN_BITS <= value <= MAX_BITS) or value != round(value):
            raise ValueError(f"{name}: {arg} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return jnp.asarray(bits, jnp.float32)


def storage_dtype(bits: int) -> np.dtype:
    """The integer dtype that stores ``bits``-bit values: int8 up to 8 bits, else int16."""
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
    if not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer):
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
    """
    qmin, qmax = qrange(bits, symmetric=symmetric)
    return jnp.clip(jnp.round(x.astype(jnp.float32) / scale) + zero_point, qmin, qmax)


def dequantize(q, scale, zero_point, dtype=jnp.float32) -> jax.Array:
    """Real values of integer codes: ``(q - z) * s`` in ``dtype``."""
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
    """Min and max of ``x`` over every axis except ``channel_axes`` (kept with size 1 on the others)."""
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
    bits = check_bits("fake_quant", bits)
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


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _encode(x, bits: int, symmetric: bool, channel_axes):
    """Codes (storage dtype), scales and zero points of ``x`` by its own range; jitted (one compile per shape)."""
    lo, hi = minmax(x, channel_axes)
    scale, zero_point = compute_qparams(lo, hi, bits=bits, symmetric=symmetric)
    dt = storage_dtype(bits)
    return quantize(x, scale, zero_point, bits=bits, symmetric=symmetric).astype(dt), scale, zero_point.astype(dt)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QTensor:
    """An array stored as integers with per-tensor or per-channel scales.

    ``values`` holds the codes in int8 (up to 8 bits) or int16; ``scale``
    (float32) and ``zero_point`` (the values' dtype) have ``values``' rank
    with size 1 on reduced axes. ``bits`` and ``dtype`` (the dequantized
    dtype) are static. A pytree, so it goes through ``jit``, ``vmap`` and
    orbax like any other params.

    Attributes:
      values: integer codes, the original array's shape.
      scale: float32 scales.
      zero_point: integer zero points.
      bits: the bit width the codes use (static).
      symmetric: whether the narrow symmetric range is used (static).
      dtype: the dtype :meth:`dequantize` returns (static, a string).

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> qt = quant.QTensor.from_array(jnp.array([[1.0, -2.0], [0.5, 4.0]]), channel_axes=-1)
      >>> qt.values.dtype.name, qt.scale.shape, qt.nbytes
      ('int8', (1, 2), 14)
      >>> qt.dequantize().round(1).tolist()
      [[1.0, -2.0], [0.5, 4.0]]
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    bits: int = dataclasses.field(default=8, metadata=dict(static=True))
    symmetric: bool = dataclasses.field(default=True, metadata=dict(static=True))
    dtype: str = dataclasses.field(default="float32", metadata=dict(static=True))

    @classmethod
    def from_array(
        cls, x, *, bits: int = 8, symmetric: bool = True, channel_axes: Sequence[int] | int | None = None
    ) -> QTensor:
        """Quantize ``x`` by its own min and max (per tensor, or per slice along ``channel_axes``).

        Args:
          x: a floating array.
          bits: a concrete bit width in [2, 16].
          symmetric: see :func:`qrange`.
          channel_axes: axes that get their own scale; ``None`` is per-tensor.

        Raises:
          ValueError: bad ``bits``, an integer ``x``, or a non-finite ``x``.
        """
        if isinstance(bits, jax.core.Tracer):
            raise ValueError("QTensor.from_array: bits must be concrete (storage dtype depends on it)")
        check_bits("QTensor.from_array", bits)
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"QTensor.from_array: x must be floating, got dtype {jnp.result_type(x)}")
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError("QTensor.from_array: x has non-finite values; ranges must be finite")
        axes = None if channel_axes is None else tuple(np.atleast_1d(channel_axes).tolist())
        codes, scale, zero_point = _encode(jnp.asarray(x), int(bits), bool(symmetric), axes)
        return cls(codes, scale, zero_point, int(bits), bool(symmetric), jnp.dtype(x.dtype).name)

    def dequantize(self) -> jax.Array:
        """The real array: ``(values - zero_point) * scale`` in :attr:`dtype`."""
        return dequantize(self.values, self.scale, self.zero_point.astype(jnp.float32), self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def nbytes(self) -> int:
        """Stored bytes: codes, scales and zero points (bits <= 8 stored one per byte)."""
        return int(self.values.nbytes + self.scale.nbytes + self.zero_point.nbytes)


def is_qtensor(x) -> bool:
    """Whether ``x`` is a :class:`QTensor` (use as ``is_leaf`` when mapping over quantized params)."""
    return isinstance(x, QTensor)


def dequantize_tree(tree: Params) -> Params:
    """Replace every :class:`QTensor` in ``tree`` by its dequantized array; other leaves stay."""
    return jax.tree.map(lambda x: x.dequantize() if is_qtensor(x) else x, tree, is_leaf=is_qtensor)


def default_channel_axes(path, leaf) -> tuple[int, ...]:
    """Per-channel axes for a kernel when nothing better is known: the last (output) axis.

    Flax's ``Dense`` kernels are ``(in, out)`` and its ``Conv`` kernels
    ``(..., in, out)``, so the last axis is the output channel. For the
    exact axes of any model, take them from :func:`hamjax.jaxpr.find_sites`.
    """
    del path, leaf
    return (-1,)


def _selected(name: str, params, filter: Filter | None):
    """Flattened ``(path, leaf, selected)`` triples; errors for integer or empty selections."""
    filter = resolve_filter(name, filter)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_qtensor)
    flags = [bool(filter(p, x)) for p, x in leaves]
    for (p, x), flag in zip(leaves, flags, strict=True):
        if flag and not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(
                f"{name}: filter selects {jax.tree_util.keystr(p)} of dtype {jnp.result_type(x)}; "
                "only floating leaves can be quantized"
            )
    if not any(flags):
        raise ValueError(f"{name}: filter selects no leaf of params; expected at least one")
    return leaves, treedef, flags


def _axes_for(per_channel: bool, channel_axes, path, leaf):
    """The channel axes of one leaf: ``None`` (per-tensor) or from ``channel_axes`` (callable, dict or default)."""
    if not per_channel:
        return None
    if channel_axes is None:
        return default_channel_axes(path, leaf)
    if callable(channel_axes):
        return channel_axes(path, leaf)
    return channel_axes.get(jax.tree_util.keystr(path), (-1,))


def quantize_params(
    params: Params,
    *,
    bits: int = 8,
    symmetric: bool = True,
    per_channel: bool = True,
    filter: Filter | None = None,
    channel_axes=None,
) -> Params:
    """Store the selected leaves of ``params`` as :class:`QTensor` (int storage).

    Args:
      params: any pytree of arrays.
      bits: a concrete bit width in [2, 16]; 4-bit codes are stored one per
        int8 byte.
      symmetric: symmetric weights (zero point 0), the usual choice.
      per_channel: one scale per output channel; ``False`` is per-tensor.
      filter: ``filter(path, leaf) -> bool`` selecting leaves;
        :func:`hamjax.prune.default_filter` (kernels) if ``None``.
      channel_axes: ``channel_axes(path, leaf) -> axes`` or a dict from
        ``jax.tree_util.keystr(path)`` to axes (as
        :func:`hamjax.jaxpr.weight_channel_axes` gives); defaults to
        :func:`default_channel_axes`.

    Returns:
      ``params`` with :class:`QTensor` at the selected leaves.

    Raises:
      ValueError: bad ``bits``, a filter that selects nothing or selects an
        integer leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import measure, quant
      >>> params = {"dense": {"kernel": jnp.ones((256, 128)), "bias": jnp.zeros(128)}}
      >>> q = quant.quantize_params(params)
      >>> measure.param_bytes(params) / measure.param_bytes(q) > 3.8
      True
    """
    check_bits("quantize_params", bits)
    leaves, treedef, flags = _selected("quantize_params", params, filter)

    out = [
        QTensor.from_array(x, bits=bits, symmetric=symmetric, channel_axes=_axes_for(per_channel, channel_axes, p, x))
        if flag
        else x
        for (p, x), flag in zip(leaves, flags, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


class FakeQuantState(NamedTuple):
    """State of :func:`fake_quant_weights`: the number of applications (ranges come from the weights)."""

    count: jax.Array


def fake_quant_weights(
    bits=8,
    *,
    symmetric: bool = True,
    per_channel: bool = True,
    filter: Filter | None = None,
    channel_axes=None,
) -> Transform:
    """A param transform that snaps the selected weights onto their quantization grid.

    ``apply`` returns params whose selected leaves are
    :func:`fake_quant` of themselves (per output channel by default); the
    gradient through it is straight-through, so it can sit inside a loss
    for quantization-aware training.

    Args:
      bits: bit width in [2, 16]; may be a traced array (``vmap`` over it).
      symmetric, per_channel, filter, channel_axes: as in :func:`quantize_params`.

    Returns:
      A :class:`hamjax.Transform`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> t = quant.fake_quant_weights(bits=4)
      >>> params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
      >>> q, _ = t.apply(params, t.init(params))
      >>> len(set(q["w"].ravel().tolist())) <= 15
      True
    """
    check_bits("fake_quant_weights", bits)

    def init(params):
        _selected("fake_quant_weights", params, filter)
        return FakeQuantState(jnp.zeros((), jnp.int32))

    def apply(params, state, **extra):
        del extra
        leaves, treedef, flags = _selected("fake_quant_weights", params, filter)

        def one(path, x):
            axes = _axes_for(per_channel, channel_axes, path, x)
            return fake_quant(x, bits=bits, symmetric=symmetric, channel_axes=axes)

        out = [one(p, x) if flag else x for (p, x), flag in zip(leaves, flags, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, out), FakeQuantState(state.count + 1)

    return Transform(init, apply)
