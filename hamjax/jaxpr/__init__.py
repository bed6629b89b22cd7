"""The jaxpr interpreter every family builds on: find weighted ops, intercept them, capture named values.

Any apply function (Flax NNX, Linen, plain ``jax.numpy``) is traced to a
jaxpr and evaluated again with callbacks:

* :mod:`~hamjax.jaxpr.equations`: single equations (:func:`call_body`,
  :func:`bind_equation`) and :class:`Site`, an op that consumes a weight;
* :mod:`~hamjax.jaxpr.interpret`: :func:`intercept`, the function
  transform that calls a hook at every site and named value;
* :mod:`~hamjax.jaxpr.sites`: :func:`find_sites` and
  :func:`weight_channel_axes`;
* :mod:`~hamjax.jaxpr.uses`: :func:`weight_filter`, the leaves a model
  uses only as dense or convolution weights (a filter that decides by use);
* :mod:`~hamjax.jaxpr.intermediates`: :func:`capture`, :func:`names` and
  :func:`shapes` of named intermediate activations.

Quantization (:mod:`hamjax.quant`), calibration, distillation on
intermediates and the ONNX exporter all use it.
"""

from hamjax.jaxpr.equations import MARKER_PRIMITIVE, SITE_PRIMITIVES, Site, bind_equation, call_body
from hamjax.jaxpr.intermediates import capture, names, shapes
from hamjax.jaxpr.interpret import Hook, OutputHook, Rewrite, Span, intercept
from hamjax.jaxpr.sites import find_sites, weight_channel_axes
from hamjax.jaxpr.uses import WeightFilter, weight_filter

__all__ = [
    "MARKER_PRIMITIVE",
    "SITE_PRIMITIVES",
    "Hook",
    "OutputHook",
    "Rewrite",
    "Site",
    "Span",
    "WeightFilter",
    "bind_equation",
    "call_body",
    "capture",
    "find_sites",
    "intercept",
    "names",
    "shapes",
    "weight_channel_axes",
    "weight_filter",
]
