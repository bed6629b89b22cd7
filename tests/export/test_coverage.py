"""Which quantized sites of a hand-built optimized graph run as integer kernels (hamjax.export.coverage)."""

import warnings

import numpy as np
import pytest
from onnx import helper, numpy_helper

from hamjax.export import coverage
from hamjax.export.coverage import FloatSiteWarning, SiteKernel, site_kernels, summary, warn_float_sites


def _graph(nodes, initializers=()):
    return helper.make_graph(nodes, "g", [], [], list(initializers))


def _sites(n, primitive="dot_general"):
    return [(f"s{j}", primitive) for j in range(n)]


def test_an_integer_kernel_takes_the_scale_and_a_float_op_is_found_through_dequantize_and_layout_ops():
    graph = _graph(
        [
            helper.make_node("QGemm", ["x", "hq_w0_q", "hq_w0_s"], ["y0"]),
            helper.make_node("DequantizeLinear", ["hq_w1_q", "hq_w1_s"], ["w1"]),
            helper.make_node("Transpose", ["w1"], ["w1_t"], perm=[1, 0]),
            helper.make_node("Reshape", ["w1_t", "shape"], ["w1_r"]),
            helper.make_node("MatMul", ["y0", "w1_r"], ["y1"]),
            # onnxruntime renames the scales it folds a transpose into: still site 2's weight
            helper.make_node("MatMulIntegerToFloat", ["y1", "hq_w2_q_T", "a_s", "hq_w2_s_T"], ["y2"]),
        ]
    )
    kernels = site_kernels(graph, [("a", "dot_general"), ("b", "dot_general"), ("c", "conv_general_dilated")])
    assert kernels == (
        SiteKernel("a", "dot_general", "QGemm", True),
        SiteKernel("b", "dot_general", "MatMul", False),
        SiteKernel("c", "conv_general_dilated", "MatMulIntegerToFloat", True),
    )


def test_a_site_whose_weight_no_node_uses_has_no_kernel():
    # hq_w10_s and hq_w1x are not site 1's weight, nor is a DequantizeLinear whose output nothing uses a kernel
    graph = _graph(
        [
            helper.make_node("QGemm", ["x", "hq_w10_s"], ["y"]),
            helper.make_node("QGemm", ["x", "hq_w1x"], ["z"]),
            helper.make_node("DequantizeLinear", ["hq_w0_q", "hq_w0_s"], ["w0"]),
        ]
    )
    assert [(k.kernel, k.integer, k.chosen) for k in site_kernels(graph, _sites(2))] == [
        (None, False, False),
        (None, False, False),
    ]


def test_a_dequantized_weight_that_reaches_an_integer_kernel_through_layout_ops_counts_as_integer():
    graph = _graph(
        [
            helper.make_node("DequantizeLinear", ["hq_w0_q", "hq_w0_s"], ["w"]),
            helper.make_node("Identity", ["w"], ["w_i"]),
            helper.make_node("Unsqueeze", ["w_i", "axes"], ["w_u"]),
            helper.make_node("QLinearConv", ["x", "w_u"], ["y"]),
        ]
    )
    (kernel,) = site_kernels(graph, _sites(1, "conv_general_dilated"))
    assert (kernel.kernel, kernel.integer) == ("QLinearConv", True)


def _exported_conv():
    """The exported graph of one int8 convolution: codes dequantized, then Conv writing ``conv_out``."""
    return _graph(
        [
            helper.make_node("DequantizeLinear", ["hq_w0_q", "hq_w0_s"], ["w0"]),
            helper.make_node("Transpose", ["w0"], ["w0_t"], perm=[3, 2, 0, 1]),
            helper.make_node("Conv", ["x", "w0_t"], ["conv_out"], name="conv"),
            helper.make_node("Relu", ["conv_out"], ["y"]),
        ]
    )


@pytest.mark.parametrize("by", ["node name", "output name"])
def test_a_renamed_weight_is_found_through_the_exported_graphs_output_name(by):
    # onnxruntime reorders a float convolution's weights for its NCHWc kernel under a name of its own
    name, out = ("conv_out_nchwc", "reordered") if by == "node name" else ("fused", "conv_out")
    optimized = _graph(
        [
            helper.make_node("ReorderInput", ["x"], ["x_nchwc"]),
            helper.make_node("Conv", ["x_nchwc", "w_reordered"], [out], name=name, domain="com.microsoft.nchwc"),
        ]
    )
    sites = _sites(1, "conv_general_dilated")
    assert site_kernels(optimized, sites)[0].kernel is None
    (kernel,) = site_kernels(optimized, sites, exported_graph=_exported_conv())
    assert (kernel.kernel, kernel.integer, kernel.chosen) == ("Conv", False, False)


def test_the_exported_graph_is_only_asked_when_the_optimized_graph_does_not_name_the_weight():
    optimized = _graph([helper.make_node("QLinearConv", ["x", "hq_w0_q", "hq_w0_s"], ["conv_out"])])
    (kernel,) = site_kernels(optimized, _sites(1), exported_graph=_exported_conv())
    assert (kernel.kernel, kernel.integer) == ("QLinearConv", True)
    # nothing in either graph computes with the weight: no kernel
    lost = _graph([helper.make_node("Relu", ["x"], ["y"])])
    assert site_kernels(lost, _sites(1), exported_graph=_graph([]))[0].kernel is None


def _float_grid(name="hq_w0_f"):
    """The exported graph of a convolution whose weight is written as float grid values."""
    grid = numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), name)
    return _graph([helper.make_node("Conv", ["x", name], ["y"])], [grid])


@pytest.mark.parametrize("name", ["hq_w0_f", "hq_w0_f_nchwc"])
def test_a_site_written_as_float_grid_values_is_float_by_choice(name):
    exported = _float_grid(name)
    (kernel,) = site_kernels(exported, _sites(1, "conv_general_dilated"), exported_graph=exported)
    assert kernel == SiteKernel("s0", "conv_general_dilated", "Conv", False, chosen=True)
    # without the exported graph the choice cannot be seen
    assert not site_kernels(exported, _sites(1))[0].chosen


def test_float_grid_values_found_as_a_node_input_too_and_only_for_their_own_site():
    exported = _graph(
        [
            helper.make_node("Conv", ["x", "hq_w0_f"], ["y0"]),
            helper.make_node("DequantizeLinear", ["hq_w1_q", "hq_w1_s"], ["w1"]),
            helper.make_node("Conv", ["y0", "w1"], ["y1"]),
            helper.make_node("Conv", ["y1", "hq_w2_fx"], ["y2"]),  # not a weight name of site 2
        ]
    )
    kernels = site_kernels(exported, _sites(3, "conv_general_dilated"), exported_graph=exported)
    assert [(k.kernel, k.integer, k.chosen) for k in kernels] == [
        ("Conv", False, True),
        ("Conv", False, False),
        (None, False, False),
    ]


def test_float_grid_values_found_as_an_initializer_no_node_reads_any_more():
    exported = _float_grid()
    exported.node[0].input[1] = "w_reordered"
    optimized = _graph([helper.make_node("Conv", ["x", "hq_w0_f"], ["y"])])
    (kernel,) = site_kernels(optimized, _sites(1, "conv_general_dilated"), exported_graph=exported)
    assert (kernel.kernel, kernel.chosen) == ("Conv", True)


def test_an_integer_site_is_never_marked_chosen():
    exported = _float_grid()
    optimized = _graph([helper.make_node("QLinearConv", ["x", "hq_w0_s"], ["y"])])
    (kernel,) = site_kernels(optimized, _sites(1), exported_graph=exported)
    assert (kernel.integer, kernel.chosen) == (True, False)


def test_summary_counts_integer_sites_and_names_the_float_ones():
    a = SiteKernel("a", "dot_general", "QGemm", True)
    b = SiteKernel("b", "conv_general_dilated", "Conv", False)
    c = SiteKernel("c", "conv_general_dilated", "Conv", False, chosen=True)
    d = SiteKernel("d", "dot_general", None, False)
    assert summary([]) == ""
    assert summary([a, a]) == "integer kernels at 2 of 2 quantized sites"
    assert summary([a, b, c, d]) == (
        "integer kernels at 1 of 4 quantized sites (float: b as Conv, c as Conv, by choice, d as folded constant)"
    )


def test_warn_float_sites_warns_once_for_an_unexpected_float_site_from_the_callers_line():
    kernels = [SiteKernel("a", "dot_general", "QGemm", True), SiteKernel("b", "dot_general", "MatMul", False)]
    with pytest.warns(FloatSiteWarning) as record:
        warn_float_sites(kernels, where="mine.onnx")
    assert len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message) == (
        "mine.onnx: onnxruntime runs quantized sites in float: integer kernels at 1 of 2 quantized sites "
        "(float: b as MatMul)"
    )
    assert issubclass(FloatSiteWarning, UserWarning)


@pytest.mark.parametrize(
    "kernels",
    [
        [],
        [SiteKernel("a", "dot_general", "QGemm", True)],
        [SiteKernel("a", "dot_general", "QGemm", True), SiteKernel("b", "conv", "Conv", False, chosen=True)],
    ],
    ids=["no sites", "all integer", "float by choice"],
)
def test_warn_float_sites_is_silent_when_every_float_site_was_chosen(kernels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coverage.warn_float_sites(kernels)
