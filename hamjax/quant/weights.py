"""Quantized weights over params pytrees: integer storage (:class:`QTensor`) and the fake-quant transform.

:func:`quantize_params` stores the selected leaves of any params pytree as
:class:`QTensor` (int8 or int16 codes with per-tensor or per-channel scales
and zero points), which is what a quantized model ships;
:func:`dequantize_tree` undoes it. :func:`fake_quant_weights` is a
:class:`hamjax.Transform` that snaps the selected weights onto their grid
with straight-through gradients, for quantization-aware training of params
(activations are the business of :mod:`hamjax.quant.model`).
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
from hamjax._checks import check_finite, is_traced
from hamjax._select import Filter, resolve_filter
from hamjax.quant.numerics import check_bits, compute_qparams, dequantize, fake_quant, minmax, quantize, storage_dtype

Params = Any


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

        Returns:
          A :class:`QTensor` of ``x``'s shape whose :meth:`dequantize` returns ``x``'s dtype.

        Raises:
          ValueError: bad ``bits``, an integer ``x``, or a non-finite ``x``.

        Examples:
          >>> import jax.numpy as jnp
          >>> from hamjax import quant
          >>> quant.QTensor.from_array(jnp.array([-1.0, 0.0, 1.0]), bits=4).values.tolist()
          [-7, 0, 7]
        """
        if is_traced(bits):
            raise ValueError("QTensor.from_array: bits must be concrete (storage dtype depends on it)")
        check_bits("QTensor.from_array", "bits", bits)
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(f"QTensor.from_array: x must be floating, got dtype {jnp.result_type(x)}")
        check_finite("QTensor.from_array", "x", x)
        axes = None if channel_axes is None else tuple(np.atleast_1d(channel_axes).tolist())
        codes, scale, zero_point = _encode(jnp.asarray(x), int(bits), bool(symmetric), axes)
        return cls(codes, scale, zero_point, int(bits), bool(symmetric), jnp.dtype(x.dtype).name)

    def dequantize(self) -> jax.Array:
        """The real array: ``(values - zero_point) * scale`` in :attr:`dtype`.

        Examples:
          >>> import jax.numpy as jnp
          >>> from hamjax import quant
          >>> quant.QTensor.from_array(jnp.array([-1.0, 0.5, 1.0]), bits=8).dequantize().round(2).tolist()
          [-1.0, 0.5, 1.0]
        """
        return dequantize(self.values, self.scale, self.zero_point.astype(jnp.float32), self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape (that of :attr:`values`)."""
        return self.values.shape

    @property
    def nbytes(self) -> int:
        """Stored bytes: codes, scales and zero points (bits <= 8 stored one per byte)."""
        return int(self.values.nbytes + self.scale.nbytes + self.zero_point.nbytes)


def is_qtensor(x) -> bool:
    """Whether ``x`` is a :class:`QTensor` (use as ``is_leaf`` when mapping over quantized params).

    Args:
      x: anything.

    Returns:
      A bool.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> q = quant.quantize_params({"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)})
      >>> {k: quant.is_qtensor(v) for k, v in q.items()}
      {'bias': False, 'kernel': True}
    """
    return isinstance(x, QTensor)


def dequantize_tree(tree: Params) -> Params:
    """Replace every :class:`QTensor` in ``tree`` by its dequantized array; other leaves stay.

    Args:
      tree: a pytree that may hold :class:`QTensor` leaves.

    Returns:
      The same structure with plain arrays.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> params = {"kernel": jnp.array([[0.5, -1.0]]), "bias": jnp.zeros(2)}
      >>> quant.dequantize_tree(quant.quantize_params(params))["kernel"].tolist()
      [[0.5, -1.0]]
    """
    return jax.tree.map(lambda x: x.dequantize() if is_qtensor(x) else x, tree, is_leaf=is_qtensor)


def default_channel_axes(path, leaf) -> tuple[int, ...]:
    """Per-channel axes for a kernel when nothing better is known: the last (output) axis.

    Flax's ``Dense`` kernels are ``(in, out)`` and its ``Conv`` kernels
    ``(..., in, out)``, so the last axis is the output channel. For the
    exact axes of any model, take them from :func:`hamjax.jaxpr.weight_channel_axes`.

    Args:
      path: the leaf's key path (unused).
      leaf: the leaf (unused).

    Returns:
      ``(-1,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import quant
      >>> quant.default_channel_axes((), jnp.ones((3, 4)))
      (-1,)
    """
    del path, leaf
    return (-1,)


def _selected(where: str, params, filter: Filter | None):
    """Flattened ``(path, leaf, selected)`` triples; errors for integer or empty selections."""
    filter = resolve_filter(where, filter)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_qtensor)
    flags = [bool(filter(p, x)) for p, x in leaves]
    for (p, x), flag in zip(leaves, flags, strict=True):
        if flag and not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(
                f"{where}: filter selects {jax.tree_util.keystr(p)} of dtype {jnp.result_type(x)}; "
                "only floating leaves can be quantized"
            )
    if not any(flags):
        raise ValueError(f"{where}: filter selects no leaf of params; expected at least one")
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
    check_bits("quantize_params", "bits", bits)
    leaves, treedef, flags = _selected("quantize_params", params, filter)

    out = [
        QTensor.from_array(x, bits=bits, symmetric=symmetric, channel_axes=_axes_for(per_channel, channel_axes, p, x))
        if flag
        else x
        for (p, x), flag in zip(leaves, flags, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


class FakeQuantState(NamedTuple):
    """State of :func:`fake_quant_weights`: the number of applications (ranges come from the weights).

    Attributes:
      count: int32 scalar, how many times ``apply`` ran.
    """

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
    check_bits("fake_quant_weights", "bits", bits)

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
