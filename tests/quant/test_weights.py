"""Quantized weights of hamjax.quant.weights: QTensor storage, quantize_params, fake_quant_weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import random_model

from hamjax import checkpoint, measure, quant


def _x(shape=(16, 8), seed=0, scale=3.0):
    """Random weights; most tests share this shape, so eager ops compile once."""
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---------------------------------------------------------------- QTensor


@pytest.mark.parametrize(("bits", "dtype"), [(2, np.int8), (4, np.int8), (8, np.int8), (9, np.int16), (16, np.int16)])
def test_qtensor_storage_dtype(bits, dtype):
    qt = quant.QTensor.from_array(_x(), bits=bits, channel_axes=-1)
    assert qt.values.dtype == dtype and qt.zero_point.dtype == dtype and qt.scale.dtype == np.float32
    assert quant.storage_dtype(bits) == dtype
    qmin, qmax = quant.qrange(bits)
    assert int(qt.values.min()) >= int(qmin) and int(qt.values.max()) <= int(qmax)
    assert qt.shape == (16, 8) and qt.scale.shape == (1, 8)


@pytest.mark.parametrize(
    ("bits", "symmetric", "axes"), [(8, True, -1), (4, False, -1), (12, False, None), (8, True, 0)]
)
def test_qtensor_nbytes_and_dequantize(bits, symmetric, axes):
    x = _x()
    qt = quant.QTensor.from_array(x, bits=bits, symmetric=symmetric, channel_axes=axes)
    width = 1 if bits <= 8 else 2
    n_scales = {-1: 8, 0: 16, None: 1}[axes]
    assert qt.nbytes == 128 * width + n_scales * 4 + n_scales * width
    assert measure.param_bytes(qt) == qt.nbytes
    back = qt.dequantize()
    assert back.dtype == jnp.float32 and back.shape == x.shape
    assert np.all(np.abs(np.asarray(back) - np.asarray(x)) <= 0.5 * np.asarray(qt.scale) * 1.01 + 1e-6)
    np.testing.assert_allclose(quant.dequantize_tree({"a": qt, "b": x})["a"], back)


def test_qtensor_bf16_dequantizes_to_bf16():
    qt = quant.QTensor.from_array(_x().astype(jnp.bfloat16), channel_axes=-1)
    assert qt.dtype == "bfloat16" and qt.dequantize().dtype == jnp.bfloat16


def test_qtensor_rejects_integer_and_non_finite_arrays():
    with pytest.raises(ValueError, match="floating"):
        quant.QTensor.from_array(jnp.arange(4))
    with pytest.raises(ValueError, match="finite"):
        quant.QTensor.from_array(jnp.array([1.0, jnp.nan]))


def test_qtensor_is_a_pytree_that_goes_through_jit():
    qt = quant.QTensor.from_array(_x(), bits=4, symmetric=False, channel_axes=-1)
    leaves, treedef = jax.tree.flatten(qt)
    assert len(leaves) == 3
    out = jax.jit(lambda q: q.dequantize())(qt)
    np.testing.assert_array_equal(out, qt.dequantize())
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert (rebuilt.bits, rebuilt.symmetric, rebuilt.dtype) == (4, False, "float32")


def test_qtensor_orbax_round_trip(tmp_path):
    x = _x()
    tree = {
        "a": quant.QTensor.from_array(x, bits=4, symmetric=False, channel_axes=-1),
        "b": quant.QTensor.from_array(x, bits=12),
        "c": jnp.arange(3.0),
    }
    checkpoint.save_tree(tmp_path / "q", tree)
    back = checkpoint.load_tree(tmp_path / "q", like=tree)
    chex.assert_trees_all_equal_shapes_and_dtypes(back, tree)
    assert isinstance(back["a"], quant.QTensor) and (back["a"].bits, back["a"].symmetric) == (4, False)
    chex.assert_trees_all_equal(back, tree)
    np.testing.assert_array_equal(back["b"].dequantize(), tree["b"].dequantize())


# ---------------------------------------------------------------- quantize_params and fake_quant_weights


def test_quantize_params_mlp_bytes_ratio():
    _, config, params = random_model("mlp")
    assert config.sizes == (784, 512, 512, 10)
    q = quant.quantize_params(params)
    kernels = [k for k in jax.tree.leaves(q, is_leaf=quant.is_qtensor) if quant.is_qtensor(k)]
    assert [k.shape for k in kernels] == [(784, 512), (512, 512), (512, 10)]
    assert all(k.values.dtype == np.int8 and k.scale.shape == (1, k.shape[1]) for k in kernels)
    ratio = measure.param_bytes(params) / measure.param_bytes(q)
    assert 3.85 < ratio < 4.0
    biases = q["params"]["layers"][0]["bias"]
    assert not quant.is_qtensor(biases) and biases.dtype == jnp.float32


def test_quantize_params_channel_axes_dict_and_per_tensor():
    params = {"w": _x(seed=2), "kernel": _x(seed=1), "embedding": _x(seed=3)}
    q = quant.quantize_params(params, filter=lambda p, x: x.ndim == 2, channel_axes={"['w']": (0,)})
    assert q["w"].scale.shape == (16, 1) and q["kernel"].scale.shape == (1, 8)
    q = quant.quantize_params(params, per_channel=False, bits=16, symmetric=False)
    assert q["kernel"].scale.shape == (1, 1) and q["kernel"].values.dtype == np.int16
    assert not quant.is_qtensor(q["embedding"])  # the default filter leaves embeddings
    q = quant.quantize_params(params, filter=lambda p, x: True, channel_axes=lambda p, x: (0,))
    assert q["w"].scale.shape == q["kernel"].scale.shape == q["embedding"].scale.shape == (16, 1)


def test_quantize_params_errors():
    params = {"kernel": _x(), "steps": jnp.arange(4), "b": jnp.zeros(4)}
    with pytest.raises(ValueError, match=r"\['steps'\]"):
        quant.quantize_params(params, filter=lambda p, x: x.ndim == 1)
    with pytest.raises(ValueError, match="selects no leaf"):
        quant.quantize_params(params, filter=lambda p, x: False)
    with pytest.raises(ValueError, match="selects no leaf"):
        quant.quantize_params({"b": jnp.zeros(4)})
    with pytest.raises(ValueError, match="filter"):
        quant.quantize_params(params, filter="kernel")
    t = quant.fake_quant_weights(4, filter=lambda p, x: False)
    with pytest.raises(ValueError, match="selects no leaf"):
        t.init(params)


def test_fake_quant_weights_snaps_kernels_only():
    params = {"dense": {"kernel": _x(), "bias": jnp.linspace(-1, 1, 8)}}
    t = quant.fake_quant_weights(3, symmetric=True)
    state = t.init(params)
    out, state = t.apply(params, state)
    assert int(state.count) == 1
    np.testing.assert_array_equal(out["dense"]["bias"], params["dense"]["bias"])
    np.testing.assert_allclose(
        out["dense"]["kernel"], quant.fake_quant(params["dense"]["kernel"], bits=3, channel_axes=-1)
    )
    assert max(len(np.unique(np.asarray(out["dense"]["kernel"])[:, c])) for c in range(8)) <= 7
    # Straight-through: d/dw sum(fq(w)) is 1 everywhere for a dynamic symmetric range.
    g = jax.jit(jax.grad(lambda p: t.apply(p, state)[0]["dense"]["kernel"].sum()))(params)
    np.testing.assert_array_equal(g["dense"]["kernel"], np.ones((16, 8)))
