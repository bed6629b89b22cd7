"""Quantization arithmetic of hamjax.quant.numerics: ranges, qparams, fake-quant, bit checks, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hamjax import quant


def _x(shape=(16, 8), seed=0, scale=3.0):
    """Random weights; most tests share this shape, so eager ops compile once."""
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---------------------------------------------------------------- qrange and qparams


@pytest.mark.parametrize(
    ("bits", "symmetric", "expected"),
    [
        (2, True, (-1, 1)),
        (2, False, (-2, 1)),
        (4, True, (-7, 7)),
        (4, False, (-8, 7)),
        (8, True, (-127, 127)),
        (8, False, (-128, 127)),
        (16, True, (-32767, 32767)),
        (16, False, (-32768, 32767)),
    ],
)
def test_qrange(bits, symmetric, expected):
    qmin, qmax = quant.qrange(bits, symmetric=symmetric)
    assert (float(qmin), float(qmax)) == expected
    assert qmin.dtype == qmax.dtype == jnp.float32


def test_qrange_under_vmap_over_bits():
    qmin, qmax = jax.vmap(lambda b: quant.qrange(b, symmetric=False))(jnp.array([3.0, 5.0, 12.0]))
    np.testing.assert_array_equal(qmin, [-4, -16, -2048])
    np.testing.assert_array_equal(qmax, [3, 15, 2047])


def test_symmetric_qparams_have_zero_point_zero():
    s, z = quant.compute_qparams(-2.0, 0.5, bits=8, symmetric=True)
    assert float(z) == 0.0
    np.testing.assert_allclose(float(s), 2.0 / 127, rtol=1e-6)
    s, z = quant.compute_qparams(jnp.array([-1.0, -0.1, 0.0]), jnp.array([0.5, 4.0, 2.0]), bits=4)
    np.testing.assert_array_equal(z, np.zeros(3))
    np.testing.assert_allclose(s, np.array([1.0, 4.0, 2.0]) / 7, rtol=1e-6)


@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 3.0), (-0.3, 0.01), (0.2, 5.0), (-7.0, -2.0), (-1e-3, 1e3)])
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_asymmetric_qparams_make_zero_exact(lo, hi, bits):
    s, z = quant.compute_qparams(lo, hi, bits=bits, symmetric=False)
    qmin, qmax = quant.qrange(bits, symmetric=False)
    assert float(z) == round(float(z)) and float(qmin) <= float(z) <= float(qmax)
    zero = quant.dequantize(quant.quantize(jnp.zeros(3), s, z, bits=bits, symmetric=False), s, z)
    np.testing.assert_array_equal(zero, np.zeros(3))
    # The range widened to contain 0 is covered: scale = (max(hi, 0) - min(lo, 0)) / (qmax - qmin).
    expected = (max(hi, 0.0) - min(lo, 0.0)) / (float(qmax) - float(qmin))
    np.testing.assert_allclose(float(s), expected, rtol=1e-6)


def test_asymmetric_qparams_example_values():
    s, z = quant.compute_qparams(-1.0, 3.0, bits=8, symmetric=False)
    np.testing.assert_allclose(float(s), 4.0 / 255, rtol=1e-6)
    assert float(z) == -64.0  # round(-128 + 1 / (4 / 255)) = round(-64.25)
    s, z = quant.compute_qparams(0.0, 2.0, bits=8, symmetric=False)
    assert float(z) == -128.0  # all-positive range: 0 maps to qmin


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_width_range(symmetric):
    s, z = quant.compute_qparams(0.0, 0.0, bits=8, symmetric=symmetric)
    assert float(s) > 0 and np.isfinite(float(s))
    q = quant.quantize(jnp.zeros(4), s, z, bits=8, symmetric=symmetric)
    np.testing.assert_array_equal(q, np.full(4, float(z)))
    np.testing.assert_array_equal(quant.dequantize(q, s, z), np.zeros(4))
    # A constant nonzero tensor still widens to include 0 and is represented exactly at its end.
    x = jnp.full((3,), 2.5)
    fq = quant.fake_quant(x, bits=8, symmetric=symmetric)
    np.testing.assert_allclose(fq, x, rtol=1e-6)


def test_per_channel_qparams_shapes():
    x = _x((3, 4, 5))
    for axes, shape in [(None, (1, 1, 1)), (-1, (1, 1, 5)), ((0,), (3, 1, 1)), ((0, 2), (3, 1, 5))]:
        lo, hi = quant.minmax(x, axes)
        assert lo.shape == hi.shape == shape
        s, z = quant.compute_qparams(lo, hi, bits=8, symmetric=False)
        assert s.shape == z.shape == shape
    lo, hi = quant.minmax(x, (0, 2))
    np.testing.assert_array_equal(lo[:, 0, :], np.asarray(x).min(axis=1))
    np.testing.assert_array_equal(hi[:, 0, :], np.asarray(x).max(axis=1))
    with pytest.raises(ValueError, match="channel_axes"):
        quant.minmax(x, 3)


@pytest.mark.parametrize(
    ("lo", "hi"), [(np.nan, 1.0), (-1.0, np.inf), (-np.inf, 0.0), (jnp.array([0.0, np.nan]), jnp.ones(2))]
)
def test_compute_qparams_rejects_non_finite_ranges(lo, hi):
    with pytest.raises(ValueError, match="finite"):
        quant.compute_qparams(lo, hi)


def test_compute_qparams_rejects_lo_above_hi():
    with pytest.raises(ValueError, match="lo must be <= hi"):
        quant.compute_qparams(2.0, 1.0)


# ---------------------------------------------------------------- round-trip error bound (property)


@functools.partial(jax.jit, static_argnames=("symmetric", "axes"))
def _roundtrip(x, bits, symmetric, axes):
    lo, hi = quant.minmax(x, axes)
    s, z = quant.compute_qparams(lo, hi, bits=bits, symmetric=symmetric)
    q = quant.quantize(x, s, z, bits=bits, symmetric=symmetric)
    zero = quant.dequantize(quant.quantize(jnp.zeros_like(x), s, z, bits=bits, symmetric=symmetric), s, z)
    return q, quant.dequantize(q, s, z), s, z, zero


_SHAPES = [(4, 5), (2, 3, 4)]


@st.composite
def _cases(draw):
    shape = draw(st.sampled_from(_SHAPES))
    magnitude = draw(st.sampled_from([2.0**-10, 1.0, 2.0**10]))
    elements = st.floats(-magnitude, magnitude, width=32, allow_nan=False, allow_subnormal=False)
    x = draw(hnp.arrays(np.float32, shape, elements=elements))
    per_channel = draw(st.booleans())
    axes = (draw(st.integers(0, len(shape) - 1)),) if per_channel else None
    return x, draw(st.integers(2, 16)), draw(st.booleans()), axes


@settings(max_examples=60, deadline=None)
@given(_cases())
def test_dequantize_quantize_error_is_at_most_half_a_step(case):
    x, bits, symmetric, axes = case
    q, xhat, s, z, zero = jax.device_get(_roundtrip(jnp.asarray(x), jnp.float32(bits), symmetric, axes))
    qmin, qmax = (float(v) for v in quant.qrange(bits, symmetric=symmetric))
    assert np.all(q == np.round(q)) and q.min() >= qmin and q.max() <= qmax
    if symmetric:
        assert np.all(z == 0)
    np.testing.assert_array_equal(zero, 0.0)  # 0.0 is exact in both conventions
    s = np.broadcast_to(s, x.shape)
    bound = 0.5 * s * (1 + 1e-2) + 1e-6 * np.abs(x)
    err = np.abs(xhat.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= bound), f"max error / scale = {np.max(err / s)}"


# ---------------------------------------------------------------- fake_quant


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axes", [None, -1, (0,)])
def test_fake_quant_equals_quantize_dequantize(symmetric, bits, axes):
    x = _x()
    lo, hi = quant.minmax(x, axes)
    s, z = quant.compute_qparams(lo, hi, bits=bits, symmetric=symmetric)
    expected = quant.dequantize(quant.quantize(x, s, z, bits=bits, symmetric=symmetric), s, z)
    fq = quant.fake_quant(x, bits=bits, symmetric=symmetric, channel_axes=axes)
    tol = 1e-4 * float(jnp.max(s))  # far below a step: a single misplaced code would show
    np.testing.assert_allclose(fq, expected, rtol=0, atol=tol)
    # Per-channel: at most 2^bits distinct values per channel.
    if axes == -1:
        assert max(len(np.unique(np.asarray(fq)[:, c])) for c in range(x.shape[1])) <= 2**bits
    # Idempotent: the grid maps onto itself.
    again = quant.fake_quant(fq, bits=bits, symmetric=symmetric, channel_axes=axes)
    np.testing.assert_allclose(again, fq, rtol=0, atol=tol)


def test_fake_quant_with_fixed_range_clips_and_is_idempotent():
    x = jnp.linspace(-3.0, 3.0, 61)
    fq = quant.fake_quant(x, bits=4, symmetric=True, lo=-1.0, hi=1.0)
    assert float(fq.max()) == pytest.approx(1.0) and float(fq.min()) == pytest.approx(-1.0)
    assert len(np.unique(np.asarray(fq))) == 15
    np.testing.assert_array_equal(quant.fake_quant(fq, bits=4, symmetric=True, lo=-1.0, hi=1.0), fq)


def test_fake_quant_docstring_values():
    x = jnp.array([-1.0, 0.1, 0.5, 2.0])
    assert quant.fake_quant(x, bits=2).tolist() == [0.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_gradient_is_one_inside_zero_outside(symmetric):
    x = jnp.linspace(-2.0, 2.0, 81)
    lo, hi = -1.0, 1.5
    g = jax.jit(jax.grad(lambda x: quant.fake_quant(x, bits=8, symmetric=symmetric, lo=lo, hi=hi).sum()))(x)
    s, z = quant.compute_qparams(lo, hi, bits=8, symmetric=symmetric)
    qmin, qmax = quant.qrange(8, symmetric=symmetric)
    low, high = (qmin - z) * s, (qmax - z) * s
    inside = (x >= low) & (x <= high)
    np.testing.assert_array_equal(g, inside.astype(np.float32))
    assert 0 < int(inside.sum()) < x.size  # both cases occur
    if symmetric:  # the grid ends are -1.5 and 1.5: gradient 1 up to them (plain clip would give 0.5 there)
        np.testing.assert_array_equal(g[np.abs(x) <= 1.5], 1.0)
        np.testing.assert_array_equal(g[np.abs(x) > 1.5 + 1e-6], 0.0)


def test_fake_quant_dynamic_range_passes_gradient_through():
    x = _x()
    g = jax.jit(jax.grad(lambda x: (quant.fake_quant(x, bits=4, channel_axes=-1) * x).sum()))(x)
    # d/dx [fq(x) * x] = x + fq(x) with the straight-through estimator (the range itself gets no gradient).
    np.testing.assert_allclose(g, x + quant.fake_quant(x, bits=4, channel_axes=-1), rtol=1e-6, atol=1e-6)


def test_fake_quant_jit_and_vmap_over_traced_bits():
    x = _x()
    bits = jnp.array([2.0, 3.0, 4.0, 8.0])

    def f(b):
        return quant.fake_quant(x, bits=b, symmetric=False, channel_axes=-1)

    batched = jax.jit(jax.vmap(f))(bits)
    for i, b in enumerate([2, 3, 4, 8]):
        ref = quant.fake_quant(x, bits=b, symmetric=False, channel_axes=-1)
        np.testing.assert_allclose(batched[i], ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(jax.jit(f)(jnp.float32(b)), ref, rtol=0, atol=1e-5)
    errors = [float(jnp.mean((batched[i] - x) ** 2)) for i in range(4)]
    assert errors == sorted(errors, reverse=True)  # more bits, less error


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fake_quant_preserves_dtype(dtype):
    x = _x().astype(dtype)
    out = quant.fake_quant(x, bits=8, channel_axes=-1)
    assert out.dtype == dtype
    assert jax.jit(lambda x: quant.fake_quant(x, bits=4, lo=-1.0, hi=1.0))(x).dtype == dtype
    g = jax.jit(jax.grad(lambda x: quant.fake_quant(x, bits=8).astype(jnp.float32).sum()))(x)
    assert g.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(x, np.float32), atol=0.1)


@pytest.mark.parametrize("bits", [1, 17, 8.5, 0, -3])
def test_bad_bits_raise_naming_bits(bits):
    x = _x()
    with pytest.raises(ValueError, match="bits"):
        quant.fake_quant(x, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        quant.QTensor.from_array(x, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        quant.quantize_params({"kernel": x}, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        quant.fake_quant_weights(bits)


def test_bits_must_be_scalar():
    with pytest.raises(ValueError, match="scalar"):
        quant.fake_quant(_x(), bits=jnp.array([4.0, 8.0]))


def test_fake_quant_rejects_integer_input_and_half_ranges():
    with pytest.raises(ValueError, match="floating"):
        quant.fake_quant(jnp.arange(6, dtype=jnp.int32))
    with pytest.raises(ValueError, match="both lo and hi"):
        quant.fake_quant(_x((4,)), lo=-1.0)
    with pytest.raises(ValueError, match="finite"):
        quant.fake_quant(jnp.array([1.0, jnp.inf]))


def test_check_bits_names_the_caller_and_the_argument():
    assert float(quant.check_bits("f", "act_bits", 8.0)) == 8.0
    assert quant.check_bits("f", "bits", jnp.int32(4)).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"^f: act_bits must be an integer in \[2, 16\], got 1$"):
        quant.check_bits("f", "act_bits", 1)
    with pytest.raises(ValueError, match=r"^f: bits must be a scalar integer"):
        quant.check_bits("f", "bits", True)
    # A traced width passes unchecked: its range is the caller's contract under vmap.
    assert jax.vmap(lambda b: quant.check_bits("f", "bits", b))(jnp.array([1.0, 40.0])).tolist() == [1.0, 40.0]
    assert (quant.MIN_BITS, quant.MAX_BITS) == (2, 16)
