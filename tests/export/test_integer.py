"""Integer kernels in onnxruntime: convolutions with quantized outputs, products on 3-D inputs, max pools."""

import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from reference_models import random_model

import hamjax
from hamjax import export, quant
from hamjax.export import coverage, qdq, runtime


def _x(shape, rows=256, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(rows, *shape)).astype(np.float32)


def _kernels(model, qapply, qparams):
    sites = [(r["name"], r["primitive"]) for r in qapply.site_table(qparams)]
    return coverage.site_kernels(runtime.Session(model).optimized_graph(), sites, model.graph)


def _agreement(model, qapply, qparams, x):
    got = runtime.Session(model)(x)
    want = np.asarray(jax.jit(qapply)(qparams, x))
    return float(np.mean(got.argmax(-1) == want.argmax(-1))), got, want


@pytest.fixture(scope="module")
def cnn():
    apply_fn, _, params = random_model("cnn", input_shape=(12, 12, 1), num_classes=10)
    x = _x((12, 12, 1))
    qapply, qparams = quant.quantize_model(apply_fn, params, calibration=[x[:128]])
    return qapply, qparams, x


def test_reference_cnn_convolutions_run_qlinearconv_and_match_jax(cnn):
    qapply, qparams, x = cnn
    model = qdq.quantized_model(qapply, qparams, x[:4])
    onnx.checker.check_model(model)
    kernels = _kernels(model, qapply, qparams)
    # the 1-channel first convolution takes float grid values on purpose (MIN_INTEGER_CONV_CHANNELS)
    assert [k.kernel for k in kernels] == ["Conv", "QLinearConv", "QGemm", "QGemm", "QGemm"]
    assert [k.integer for k in kernels] == [False, True, True, True, True]
    assert {"hq_w0_f", "hq_w1_q"} <= {t.name for t in model.graph.initializer}
    agree, got, want = _agreement(model, qapply, qparams, x)
    assert agree >= 0.995
    # the batch norms folded into the convolutions and the moved quantizers are exact up to float rounding
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())
    ops = {n.op_type for n in model.graph.node}
    assert "MaxPool" in ops and "ReduceMax" not in ops and "Sub" not in ops


def test_without_integer_outputs_the_convolutions_stay_float(cnn):
    qapply, qparams, x = cnn
    model = qdq.quantized_model(qapply, qparams, x[:4], integer_outputs=False)
    kernels = _kernels(model, qapply, qparams)
    assert [k.kernel for k in kernels[:2]] == ["Conv", "Conv"]
    assert not any(k.integer for k in kernels[:2])


class _LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (3, 3))(x)), (2, 2), strides=(2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_linen_cnn_convolutions_behind_layout_transposes_run_integer_kernels(tmp_path):
    model = _LinenCNN()
    x = _x((12, 12, 4))
    apply_fn, params = hamjax.linen_functional(model, model.init(jax.random.key(0), x[:2]))
    result = export.onnx(apply_fn, params, x[:64], tmp_path / "linen.onnx", precision="int8", calibration=[x[:128]])
    assert [(k.primitive, k.kernel) for k in result.sites] == [
        ("conv_general_dilated", "QLinearConv"),
        ("conv_general_dilated", "QLinearConv"),
        ("dot_general", "QGemm"),
    ]
    assert all(c.argmax_agreement >= 0.995 for c in result.checks)


def _transformer(seed=0, d=16, heads=2):
    """A hand-written jnp transformer block on (B, T, D) tokens: every dense product is 3-D."""
    rng = np.random.default_rng(seed)
    shapes = {"embed": (4, d), "q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "up": (d, 2 * d)}
    params = {k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32) for k, s in shapes.items()}
    params["down"] = jnp.asarray(rng.normal(size=(2 * d, d)) / np.sqrt(2 * d), jnp.float32)
    params["head"] = jnp.asarray(rng.normal(size=(d, 10)) / np.sqrt(d), jnp.float32)

    def apply_fn(p, x):
        t = x.reshape(x.shape[0], -1, 4) @ p["embed"]
        split = lambda y: y.reshape(y.shape[0], y.shape[1], heads, d // heads)  # noqa: E731
        q, k, v = (split(t @ p[n]) for n in "qkv")
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads), axis=-1)
        t = t + jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(t.shape) @ p["o"]
        t = t + jax.nn.relu(t @ p["up"]) @ p["down"]
        return t.mean(axis=1) @ p["head"]

    return apply_fn, params


def test_a_jnp_transformer_runs_every_dense_product_as_an_integer_kernel(tmp_path):
    apply_fn, params = _transformer()
    x = _x((4, 4))
    result = export.onnx(apply_fn, params, x[:64], tmp_path / "t.onnx", precision="int8", calibration=[x[:128]])
    assert len(result.sites) == 8
    assert all(k.integer for k in result.sites), coverage.summary(result.sites)
    assert "Einsum" not in {n.op_type for n in onnx.load(result.path).graph.node if "hq_w" in "".join(n.input)}


def _conv_then(activation, scale):
    """A plain jnp conv -> per-channel affine -> activation -> max pool -> dense model."""
    rng = np.random.default_rng(1)
    params = {
        "w": jnp.asarray(rng.normal(size=(3, 3, 4, 4)) / 4, jnp.float32),
        "d": jnp.asarray(rng.normal(size=(16, 10)) / 4, jnp.float32),
    }
    a, b = jnp.asarray(scale, jnp.float32), jnp.asarray([0.1, -0.2, 0.3, 0.0], jnp.float32)

    def apply_fn(p, x):
        y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = activation(y * a[None, None, None] + b[None, None, None])
        y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return y.reshape(y.shape[0], -1) @ p["d"]

    return apply_fn, params


def test_negative_per_channel_scales_fold_exactly():
    apply_fn, params = _conv_then(jax.nn.relu, [1.5, -0.5, 2.0, -1.0])
    x = _x((4, 4, 4)) - 0.5
    qapply, qparams = quant.quantize_model(apply_fn, params, calibration=[x[:128]])
    model = qdq.quantized_model(qapply, qparams, x[:4])
    assert [k.kernel for k in _kernels(model, qapply, qparams)] == ["QLinearConv", "QGemm"]
    agree, got, want = _agreement(model, qapply, qparams, x)
    assert agree >= 0.995
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())


def test_a_site_onnxruntime_runs_in_float_is_reported_and_warned(tmp_path):
    apply_fn, params = _conv_then(jnp.tanh, [1.0, 1.0, 1.0, 1.0])  # tanh does not commute with quantization
    x = _x((4, 4, 4))
    with pytest.warns(coverage.FloatSiteWarning, match=r"integer kernels at 1 of 2 quantized sites \(float: \['w'\]"):
        result = export.onnx(apply_fn, params, x[:64], tmp_path / "m.onnx", precision="int8", calibration=[x[:128]])
    assert [(k.site, k.integer) for k in result.sites] == [("['w']", False), ("['d']", True)]
    assert result.sites[0].kernel == "FusedConv"  # the affine folded in, tanh fused: still float


def test_fully_integer_exports_do_not_warn(tmp_path):
    apply_fn, params = _conv_then(jax.nn.relu, [1.0, 2.0, 1.0, 0.5])
    x = _x((4, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", coverage.FloatSiteWarning)
        result = export.onnx(apply_fn, params, x[:64], tmp_path / "m.onnx", precision="int8", calibration=[x[:128]])
    assert [k.kernel for k in result.sites] == ["QLinearConv", "QGemm"]


def test_a_one_channel_convolution_runs_float_by_choice_without_a_warning(tmp_path, cnn):
    qapply, qparams, x = cnn
    with warnings.catch_warnings():
        warnings.simplefilter("error", coverage.FloatSiteWarning)
        result = export.onnx(qapply, qparams, x[:64], tmp_path / "m.onnx", precision="int8")
    assert [k.integer for k in result.sites] == [False, True, True, True, True]
    assert [k.chosen for k in result.sites] == [True, False, False, False, False]
    assert re.search(
        r"4 of 5 quantized sites \(float: .*convs'\]\[0\].* as Conv, by choice\)", coverage.summary(result.sites)
    )


def test_fp32_exports_have_no_sites(tmp_path):
    apply_fn, params = _conv_then(jax.nn.relu, [1.0, 1.0, 1.0, 1.0])
    assert export.onnx(apply_fn, params, _x((4, 4, 4), 8), tmp_path / "m.onnx").sites == ()
