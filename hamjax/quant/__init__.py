"""Quantization: fake-quant arithmetic, integer weight storage, calibration and quantized models.

* :mod:`~hamjax.quant.numerics`: ranges, scales and zero points,
  :func:`fake_quant` with straight-through gradients, bit-width checks;
* :mod:`~hamjax.quant.weights`: :class:`QTensor` (int8/int16 codes with
  scales), :func:`quantize_params` and the :func:`fake_quant_weights`
  transform;
* :mod:`~hamjax.quant.calibration`: activation ranges at every site by
  min-max, percentile or MSE (:func:`calibrate`);
* :mod:`~hamjax.quant.model`: :func:`quantize_model` (post-training
  weight-only, dynamic or static int8 of any apply function) and
  :func:`fake_quant_apply` (quantization-aware training).

The sites (which operands of which ops are quantized) come from the jaxpr
interpreter, :mod:`hamjax.jaxpr`.
"""

from hamjax.quant.calibration import (
    CALIBRATION_METHODS,
    as_arrays,
    calibrate,
    calibration_inputs,
    check_batches,
    collect_histograms,
    collect_minmax,
)
from hamjax.quant.model import METHODS, QuantizedApply, fake_quant_apply, quantize_model
from hamjax.quant.numerics import (
    MAX_BITS,
    MIN_BITS,
    check_bits,
    compute_qparams,
    dequantize,
    fake_quant,
    minmax,
    qrange,
    quantize,
    storage_dtype,
)
from hamjax.quant.weights import (
    FakeQuantState,
    QTensor,
    default_channel_axes,
    dequantize_tree,
    fake_quant_weights,
    is_qtensor,
    quantize_params,
)

__all__ = [
    "CALIBRATION_METHODS",
    "MAX_BITS",
    "METHODS",
    "MIN_BITS",
    "FakeQuantState",
    "QTensor",
    "QuantizedApply",
    "as_arrays",
    "calibrate",
    "calibration_inputs",
    "check_batches",
    "check_bits",
    "collect_histograms",
    "collect_minmax",
    "compute_qparams",
    "default_channel_axes",
    "dequantize",
    "dequantize_tree",
    "fake_quant",
    "fake_quant_apply",
    "fake_quant_weights",
    "is_qtensor",
    "minmax",
    "qrange",
    "quantize",
    "quantize_model",
    "quantize_params",
    "storage_dtype",
]
