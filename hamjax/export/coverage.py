"""Which quantized sites onnxruntime runs as integer kernels.

An int8 export is only as fast as the share of its quantized ops that
onnxruntime actually fuses into integer kernels; the rest dequantize their
int8 weights and compute in float. The op *types* of the optimized graph do
not say which: one ``QGemm`` among ten float ``MatMul`` looks like success.
:func:`site_kernels` reads the graph onnxruntime writes after optimizing
(:meth:`hamjax.export.runtime.Session.optimized_graph`) and, per quantized
site, finds the node that consumes the site's weight scale (the int8
exporter names it ``hq_w<j>_s``; onnxruntime keeps the names of the scales it
fuses, even where it folds a transpose of the codes): an integer kernel
(``QLinearConv``, ``QGemm``, ``MatMulIntegerToFloat``...) takes it directly, a
float op only through a ``DequantizeLinear``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

# What may sit between a weight's DequantizeLinear and the op that computes with it.
_LAYOUT = frozenset({"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"})


class FloatSiteWarning(UserWarning):
    """A quantized site of an int8 export that onnxruntime runs in float."""


@dataclasses.dataclass(frozen=True)
class SiteKernel:
    """How onnxruntime runs one quantized site of an int8 export.

    Attributes:
      site: the site's name (:attr:`hamjax.jaxpr.Site.name`).
      primitive: its JAX primitive (``dot_general``, ``conv_general_dilated``).
      kernel: the op type onnxruntime runs it with (``"QLinearConv"``,
        ``"Conv"``...), or ``None`` where no node uses its weight any more.
      integer: whether that op is an integer kernel
        (:data:`hamjax.export.runtime.INTEGER_OPS`).
      chosen: the export kept this site float on purpose (a convolution with
        fewer than :data:`hamjax.export.integer.MIN_INTEGER_CONV_CHANNELS`
        input channels, where onnxruntime's int8 kernel is the slower one):
        listed, not warned about.
    """

    site: str
    primitive: str
    kernel: str | None
    integer: bool
    chosen: bool = False


def _float_by_choice(graph, j: int) -> bool:
    """Whether site ``j``'s weight was written as float grid values (``hq_w{j}_f``), not int8 codes."""
    names = [t.name for t in graph.initializer] + [i for n in graph.node for i in n.input]
    return any(_is_weight(name, j) and name[len(f"hq_w{j}_") :][:1] == "f" for name in names)


def _is_weight(name: str, j: int) -> bool:
    """Whether ``name`` is site ``j``'s weight (codes, scale or float grid values), as written or renamed (``hq_w0_s_T``)."""
    stem = f"hq_w{j}_"
    kind, rest = name[len(stem) : len(stem) + 1], name[len(stem) + 1 :]
    return name.startswith(stem) and kind in ("q", "s", "f") and rest[:1] in ("", "_")


def _kernel(graph, j: int) -> str | None:
    """The op type of the node that computes with site ``j``'s weight in an optimized graph."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    users = [n for n in graph.node if any(_is_weight(i, j) for i in n.input)]
    for node in users:
        if node.op_type != "DequantizeLinear":
            return node.op_type
    frontier = [o for n in users for o in n.output]
    while frontier:
        for node in consumers.get(frontier.pop(0), []):
            if node.op_type in _LAYOUT:
                frontier.extend(node.output)
            else:
                return node.op_type
    return None


def _by_output(exported, optimized, j: int) -> str | None:
    """The op that computes site ``j``'s old output in ``optimized`` when its weight was renamed there (NCHWc)."""
    kernel = _node(exported, j)
    if kernel is None:
        return None
    out = kernel.output[0]
    named = [n for n in optimized.node if n.name.startswith(out)]
    made = [n for n in optimized.node if out in n.output]
    found = named or made
    return found[0].op_type if found else None


def _node(graph, j: int):
    """The node of ``graph`` that computes with site ``j``'s weight (through dequantization and layout ops)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    users = [n for n in graph.node if any(_is_weight(i, j) for i in n.input)]
    frontier = []
    for node in users:
        if node.op_type not in _LAYOUT and node.op_type != "DequantizeLinear":
            return node
        frontier += list(node.output)
    while frontier:
        for node in consumers.get(frontier.pop(0), []):
            if node.op_type in _LAYOUT:
                frontier.extend(node.output)
            else:
                return node
    return None


def site_kernels(optimized_graph, sites: Sequence[tuple[str, str]], exported_graph=None) -> tuple[SiteKernel, ...]:
    """Per quantized site, the op onnxruntime runs it with and whether that is an integer kernel.

    Args:
      optimized_graph: the ``onnx.GraphProto`` onnxruntime runs
        (:meth:`hamjax.export.runtime.Session.optimized_graph`) for a model
        from :func:`hamjax.export.qdq.quantized_model`.
      sites: ``(name, primitive)`` of each quantized site in tag order (the
        rows of :meth:`hamjax.quant.QuantizedApply.site_table`).
      exported_graph: the graph that was exported, for a site whose weight
        onnxruntime renamed (a float convolution's weights reordered for its
        NCHWc kernel): the op that replaced the site's node is found by the
        name of that node's output.

    Returns:
      One :class:`SiteKernel` per site, in order.

    Examples:
      >>> from onnx import helper
      >>> nodes = [helper.make_node("QGemm", ["x", "hq_w0_s"], ["y"]), helper.make_node("DequantizeLinear",
      ...          ["hq_w1_q", "hq_w1_s"], ["w1"]), helper.make_node("MatMul", ["y", "w1"], ["z"])]
      >>> graph = helper.make_graph(nodes, "g", [], [])
      >>> [(k.kernel, k.integer) for k in site_kernels(graph, [("a", "dot_general"), ("b", "dot_general")])]
      [('QGemm', True), ('MatMul', False)]
    """
    from hamjax.export.runtime import INTEGER_OPS

    out = []
    for j, (name, primitive) in enumerate(sites):
        kernel = _kernel(optimized_graph, j)
        if kernel is None and exported_graph is not None:
            kernel = _by_output(exported_graph, optimized_graph, j)
        integer = kernel in INTEGER_OPS
        chosen = not integer and exported_graph is not None and _float_by_choice(exported_graph, j)
        out.append(SiteKernel(name, primitive, kernel, integer, chosen))
    return tuple(out)


def summary(kernels: Sequence[SiteKernel]) -> str:
    """``"integer kernels at 4 of 5 quantized sites (float: NAME as Conv)"``, or ``""`` without sites.

    Examples:
      >>> summary([SiteKernel("a", "dot_general", "QGemm", True), SiteKernel("b", "conv", "Conv", False)])
      'integer kernels at 1 of 2 quantized sites (float: b as Conv)'
    """
    if not kernels:
        return ""
    text = f"integer kernels at {sum(k.integer for k in kernels)} of {len(kernels)} quantized sites"
    floats = [
        f"{k.site} as {k.kernel or 'folded constant'}{', by choice' if k.chosen else ''}"
        for k in kernels
        if not k.integer
    ]
    return f"{text} (float: {', '.join(floats)})" if floats else text


def warn_float_sites(kernels: Sequence[SiteKernel], where: str = "export.onnx") -> None:
    """Warn with :class:`FloatSiteWarning` when a quantized site runs in float unexpectedly (not :attr:`SiteKernel.chosen`).

    Args:
      kernels: from :func:`site_kernels`.
      where: the caller named in the message.
    """
    if any(not k.integer and not k.chosen for k in kernels):
        warnings.warn(f"{where}: onnxruntime runs quantized sites in float: {summary(kernels)}", FloatSiteWarning, 2)
