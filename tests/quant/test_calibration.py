"""Activation ranges of hamjax.quant.calibration: min-max, percentile and MSE, on the true activations."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import random_model

from hamjax import quant

W1, W2 = "['w1']", "['w2']"


def _mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.normal(size=(6, 16)) / np.sqrt(6), jnp.float32),
        "b1": jnp.asarray(rng.normal(size=16) * 0.1, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(16, 3)) / 4, jnp.float32),
    }


def _mlp(p, x):
    return jnp.maximum(x @ p["w1"] + p["b1"][None], 0.0) @ p["w2"]


def _batches(n=3, seed=1, size=64):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(size, 6)), jnp.float32) for _ in range(n)]


def _identity(p, x):
    """The site's activation is the input itself."""
    return x @ p["w"]


_EYE = {"w": jnp.eye(8)}


def _qmse(x, lo, hi, bits, symmetric):
    return float(jnp.mean((quant.fake_quant(x, bits=bits, symmetric=symmetric, lo=lo, hi=hi) - x) ** 2))


def test_minmax_equals_min_and_max_of_the_true_activations():
    params, batches = _mlp_params(), _batches()
    ranges = quant.calibrate(_mlp, params, batches, method="minmax")
    assert list(ranges) == [W1, W2]
    x = np.concatenate([np.asarray(b) for b in batches])
    hidden = np.maximum(x @ np.asarray(params["w1"]) + np.asarray(params["b1"]), 0.0)
    assert ranges[W1] == (float(x.min()), float(x.max()))
    np.testing.assert_allclose(ranges[W2], (hidden.min(), hidden.max()), rtol=1e-6)
    assert all(isinstance(v, float) for r in ranges.values() for v in r)
    assert quant.collect_minmax(_mlp, params, batches) == ranges


def test_batches_as_pairs_and_generators():
    params, batches = _mlp_params(), _batches()
    pairs = [(b, jnp.zeros(b.shape[0], jnp.int32)) for b in batches]
    expected = quant.calibrate(_mlp, params, batches)
    assert quant.calibrate(_mlp, params, pairs) == expected
    assert quant.calibrate(_mlp, params, (b for b in batches)) == expected
    assert quant.calibrate(_mlp, params, pairs, method="percentile") == quant.calibrate(
        _mlp, params, batches, method="percentile"
    )


@pytest.mark.parametrize("method", quant.CALIBRATION_METHODS)
def test_asymmetric_relu_outputs_get_lo_zero(method):
    ranges = quant.calibrate(_mlp, _mlp_params(), _batches(), method=method)
    assert ranges[W2][0] == 0.0 and ranges[W2][1] > 0
    # Positive inputs: min-max reports the smallest value seen (qparams widen it to 0 later); the
    # histogram methods return ranges that already contain 0.
    positive = [jnp.abs(b) + 0.5 for b in _batches()]
    ranges = quant.calibrate(_mlp, _mlp_params(), positive, method=method)
    smallest = min(float(b.min()) for b in positive)
    assert ranges[W1][0] == (smallest if method == "minmax" else 0.0)


def test_percentile_drops_an_outlier_and_keeps_the_bulk():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2048, 8)).astype(np.float32)
    x[0, 5, 3] = 1000.0
    batches = [jnp.asarray(b) for b in x]
    (lo_m, hi_m) = quant.calibrate(_identity, _EYE, batches, method="minmax")["['w']"]
    (lo_p, hi_p) = quant.calibrate(_identity, _EYE, batches, method="percentile")["['w']"]
    assert hi_m == 1000.0 and lo_m == float(x.min())
    assert hi_p < 10.0 and hi_p - lo_p < 0.05 * (hi_m - lo_m)
    assert np.mean((x >= lo_p) & (x <= hi_p)) >= 0.99
    # A lower percentile is narrower still, and a symmetric range is symmetric.
    (lo_99, hi_99) = quant.calibrate(_identity, _EYE, batches, method="percentile", percentile=99.0)["['w']"]
    assert lo_p <= lo_99 < 0 < hi_99 <= hi_p
    assert np.mean((x >= lo_99) & (x <= hi_99)) >= 0.97
    lo_s, hi_s = quant.calibrate(_identity, _EYE, batches, method="percentile", symmetric=True)["['w']"]
    assert lo_s == -hi_s and hi_s < 10.0


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_beats_minmax_on_heavy_tails(symmetric):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.laplace(size=(4096, 8)), jnp.float32)
    minmax = quant.calibrate(_identity, _EYE, [x], method="minmax", symmetric=symmetric)["['w']"]
    mse = quant.calibrate(_identity, _EYE, [x], method="mse", bits=4, symmetric=symmetric)["['w']"]
    assert mse[1] < minmax[1] and mse[0] > minmax[0]  # both ends clipped
    if symmetric:
        assert mse[0] == -mse[1]
    err_minmax = _qmse(x, *minmax, bits=4, symmetric=symmetric)
    err_mse = _qmse(x, *mse, bits=4, symmetric=symmetric)
    assert err_mse < 0.7 * err_minmax


def test_mse_on_uniform_data_keeps_nearly_the_whole_range():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1.0, 1.0, size=(4096, 8)), jnp.float32)
    lo, hi = quant.calibrate(_identity, _EYE, [x], method="mse", bits=8)["['w']"]
    assert lo < -0.9 and hi > 0.9


@pytest.mark.parametrize("method", quant.CALIBRATION_METHODS)
def test_zero_width_activation_range(method):
    def f(p, x):
        return jnp.maximum(-jnp.abs(x), 0.0) @ p["w"]

    assert quant.calibrate(f, _EYE, [jnp.ones((4, 8))], method=method) == {"['w']": (0.0, 0.0)}


def test_collect_histograms_counts_every_value():
    params, batches = _mlp_params(), _batches()
    ranges = quant.collect_minmax(_mlp, params, batches)
    hists = quant.collect_histograms(_mlp, params, batches, ranges, num_bins=32)
    assert list(hists) == [W1, W2]
    assert hists[W1].shape == (32,) and hists[W1].sum() == 3 * 64 * 6
    assert hists[W2].sum() == 3 * 64 * 16
    x = np.concatenate([np.asarray(b) for b in batches]).ravel()
    expected, _ = np.histogram(x, bins=32, range=ranges[W1])
    np.testing.assert_allclose(hists[W1], expected, atol=2)  # bin edges may differ by float rounding


def test_collect_histograms_reads_ranges_by_site_name():
    params, batches = _mlp_params(), _batches()
    ranges = quant.collect_minmax(_mlp, params, batches)
    expected = quant.collect_histograms(_mlp, params, batches, ranges, num_bins=32)
    reordered = quant.collect_histograms(_mlp, params, batches, {W2: ranges[W2], W1: ranges[W1]}, num_bins=32)
    assert list(reordered) == [W1, W2]
    for name in (W1, W2):
        np.testing.assert_array_equal(reordered[name], expected[name])
    with pytest.raises(ValueError, match=r"lack the sites .*\['w2'\]"):
        quant.collect_histograms(_mlp, params, batches, {W1: ranges[W1]}, num_bins=32)


def test_calibrate_an_nnx_model():
    apply_fn, _, params = random_model("mlp", input_shape=(8, 8, 1))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(32, 8, 8, 1)), jnp.float32)
    ranges = quant.calibrate(apply_fn, params, [x], method="percentile")
    assert list(ranges) == [f"['params']['layers'][{i}]['kernel']" for i in range(3)]
    assert all(lo == 0.0 < hi for lo, hi in ranges.values())  # image pixels and ReLU outputs
    arrays = quant.as_arrays(ranges)
    assert all(a.shape == (2,) and a.dtype == jnp.float32 for a in arrays.values())
    np.testing.assert_allclose(arrays["['params']['layers'][0]['kernel']"], ranges["['params']['layers'][0]['kernel']"])


# ---------------------------------------------------------------- errors


def test_empty_batches_raise():
    with pytest.raises(ValueError, match="no calibration batches"):
        quant.calibrate(_mlp, _mlp_params(), [])
    with pytest.raises(ValueError, match="no calibration batches"):
        quant.collect_minmax(_mlp, _mlp_params(), iter(()))


def test_bad_batches_raise():
    with pytest.raises(ValueError, match="floating"):
        quant.calibrate(_mlp, _mlp_params(), [jnp.ones((4, 6), jnp.int32)])
    with pytest.raises(ValueError, match="non-empty"):
        quant.calibrate(_mlp, _mlp_params(), [jnp.ones((0, 6))])


def test_non_finite_activation_names_the_site():
    batches = _batches()
    bad = batches[1].at[3, 2].set(jnp.nan)
    with pytest.raises(ValueError, match=r"site \['w1'\].*non-finite"):
        quant.calibrate(_mlp, _mlp_params(), [batches[0], bad])
    # Infinite weights make only the second site's activation non-finite.
    params = {**_mlp_params(), "b1": _mlp_params()["b1"].at[0].set(jnp.inf)}
    with pytest.raises(ValueError, match=r"site \['w2'\]"):
        quant.calibrate(_mlp, params, batches, method="mse")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"method": "max"}, "method"),
        ({"method": "percentile", "percentile": 50.0}, "percentile"),
        ({"method": "percentile", "percentile": 100.5}, "percentile"),
        ({"bits": 1}, "bits"),
        ({"bits": 17}, "bits"),
        ({"method": "mse", "bits": 4.5}, "bits"),
        ({"num_bins": 8}, "num_bins"),
    ],
)
def test_bad_arguments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        quant.calibrate(_mlp, _mlp_params(), _batches(), **kw)


def test_calibration_inputs_takes_arrays_and_pairs_and_names_the_caller():
    batches = _batches(n=2)
    xs = quant.calibration_inputs([batches[0], (batches[1], np.zeros(64))])
    assert len(xs) == 2 and xs[1] is batches[1]
    with pytest.raises(ValueError, match="^quantize_model: no calibration batches"):
        quant.calibration_inputs([], "quantize_model")
    with pytest.raises(ValueError, match="^calibrate: every batch must be a non-empty floating array"):
        quant.calibration_inputs([np.ones((2, 3), np.int32)])


def test_a_single_array_is_refused_where_a_list_of_batches_belongs():
    x = _batches(1)[0]
    with pytest.raises(
        ValueError,
        match=re.escape(
            "calibrate: batches must be a list of batches, got a single array of shape (64, 6); pass [x] for one batch"
        ),
    ):
        quant.calibrate(_mlp, _mlp_params(), x)
    with pytest.raises(
        ValueError,
        match=re.escape("quantize_model: calibration must be a list of batches, got a single array of shape (64, 6)"),
    ):
        quant.quantize_model(_mlp, _mlp_params(), calibration=np.asarray(x))
    with pytest.raises(ValueError, match=re.escape("collect_minmax: batches must be a list of batches")):
        quant.collect_minmax(_mlp, _mlp_params(), x)
    assert quant.check_batches("calibrate", "batches", [x]) == [x]
    assert quant.calibrate(_mlp, _mlp_params(), [x]) == quant.calibrate(_mlp, _mlp_params(), (b for b in [x]))
