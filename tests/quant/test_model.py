"""Quantized models of hamjax.quant.model: PTQ by three methods, QAT, storage, export table, errors."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import random_model

import hamjax
from hamjax import checkpoint, measure, quant
from hamjax.distill import cross_entropy
from hamjax.train import evaluate

LAYERS = [f"['params']['layers'][{i}]['kernel']" for i in range(3)]


@pytest.fixture(scope="module")
def trained(digits):
    """An MLP trained briefly on digits: ``(apply_fn, params, test accuracy)``."""
    apply_fn, _, params = random_model("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 32, 10))
    # Trained to convergence (about 96% test accuracy): an undertrained model sits near decision boundaries
    # and int8 rounding flips a few of its 359 test answers.
    config = hamjax.TrainConfig(epochs=12, batch_size=64, learning_rate=3e-3)
    result = hamjax.fit(apply_fn, params, digits, config, progress=False)
    accuracy = evaluate(apply_fn, result.params, digits.test)["accuracy"]
    assert accuracy > 0.93
    return apply_fn, result.params, accuracy


@pytest.fixture(scope="module")
def static_int8(trained, digits):
    apply_fn, params, _ = trained
    return quant.quantize_model(apply_fn, params, calibration=[digits.train.x[:256]], calibration_method="minmax")


def _accuracy(qapply, qparams, digits):
    return evaluate(qapply, qparams, digits.test)["accuracy"]


# ---------------------------------------------------------------- post-training quantization


@pytest.mark.parametrize(
    ("method", "calibration_method"),
    [("weight_only", None), ("dynamic", None), ("static", "minmax"), ("static", "percentile"), ("static", "mse")],
)
def test_int8_methods_keep_accuracy(trained, digits, method, calibration_method):
    apply_fn, params, float_accuracy = trained
    kw = {"calibration_method": calibration_method} if calibration_method else {}
    qapply, qparams = quant.quantize_model(apply_fn, params, method=method, calibration=[digits.train.x[:256]], **kw)
    assert qapply.method == method and [s.name for s in qapply.sites] == LAYERS
    assert _accuracy(qapply, qparams, digits) >= float_accuracy - 0.01
    # The quantized model is not the float model: its logits moved.
    x = digits.test.x[:64]
    assert not np.array_equal(jax.jit(qapply)(qparams, x), jax.jit(apply_fn)(params, x))


def test_fewer_weight_bits_lose_more(trained, digits):
    apply_fn, params, float_accuracy = trained
    example = digits.test.x[:8]
    accuracy = {}
    for bits in (8, 4, 2):
        qapply, qparams = quant.quantize_model(apply_fn, params, method="weight_only", bits=bits, example=example)
        assert all(qparams["weights"]["params"]["layers"][i]["kernel"].bits == bits for i in range(3))
        accuracy[bits] = _accuracy(qapply, qparams, digits)
    assert accuracy[8] >= float_accuracy - 0.01
    assert accuracy[4] > 0.8  # chance is 0.1
    assert accuracy[2] < accuracy[8] - 0.03


def test_qapply_under_jit_equals_eager(static_int8, digits):
    qapply, qparams = static_int8
    x = digits.test.x[:128]
    eager, jitted = qapply(qparams, x), jax.jit(qapply)(qparams, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(jnp.argmax(jitted, -1), jnp.argmax(eager, -1))


def test_weight_only_equals_float_model_on_dequantized_weights(trained, digits):
    apply_fn, params, _ = trained
    x = digits.test.x[:64]
    qapply, qparams = quant.quantize_model(apply_fn, params, method="weight_only", bits=4, example=x)
    dequantized = quant.dequantize_tree(qparams["weights"])
    np.testing.assert_array_equal(jax.jit(qapply)(qparams, x), jax.jit(apply_fn)(dequantized, x))
    kernel = dequantized["params"]["layers"][1]["kernel"]
    assert max(len(np.unique(np.asarray(kernel)[:, c])) for c in range(kernel.shape[1])) <= 15


def test_qparams_bytes(static_int8, trained):
    _, params, _ = trained
    _, qparams = static_int8
    sizes = (64, 64, 32, 10)
    kernels = sum(a * b for a, b in itertools.pairwise(sizes))
    outputs = sum(sizes[1:])
    # int8 codes, a float32 scale and an int8 zero point per output channel, float32 biases, two floats per site.
    expected = kernels + 4 * outputs + outputs + 4 * outputs + 3 * 2 * 4
    assert measure.param_bytes(qparams) == expected
    assert measure.param_bytes(params) == 4 * (kernels + outputs)
    # At a realistic size the ratio approaches 4.
    apply_fn, _, big = random_model("mlp")
    _, qbig = quant.quantize_model(apply_fn, big, method="weight_only", example=jnp.zeros((1, 28, 28, 1)))
    assert 3.85 < measure.param_bytes(big) / measure.param_bytes(qbig) < 4.0


def test_site_table_static(static_int8):
    qapply, qparams = static_int8
    rows = qapply.site_table(qparams)
    assert [r["name"] for r in rows] == LAYERS
    for r in rows:
        w = r["weight"]
        assert quant.is_qtensor(w) and w.values.dtype == np.int8 and w.bits == 8 and w.symmetric
        assert w.scale.shape == (1, w.shape[1]) and np.all(np.asarray(w.zero_point) == 0)
        assert r["primitive"] == "dot_general" and r["weight_operand"] == 1 and r["channel_axes"] == (1,)
        assert r["leaf"] == r["name"] == r["site"].name
        scale, zero_point = r["activation"]
        assert scale.dtype == zero_point.dtype == jnp.float32 and float(scale) > 0
        lo, hi = (float(v) for v in qparams["activations"][r["name"]])
        expected_scale, expected_zero = quant.compute_qparams(lo, hi, bits=8, symmetric=False)
        assert float(scale) == float(expected_scale) and float(zero_point) == float(expected_zero)
        assert lo == 0.0 and float(zero_point) == -128.0  # pixels and ReLU outputs are non-negative


@pytest.mark.parametrize("method", ["dynamic", "weight_only"])
def test_site_table_without_static_ranges(trained, digits, method):
    apply_fn, params, _ = trained
    qapply, qparams = quant.quantize_model(apply_fn, params, method=method, example=digits.test.x[:8])
    rows = qapply.site_table(qparams)
    assert [r["name"] for r in rows] == LAYERS
    assert all(r["activation"] is None and quant.is_qtensor(r["weight"]) for r in rows)
    assert qparams["activations"] == {}


def test_qparams_orbax_round_trip(static_int8, digits, tmp_path):
    qapply, qparams = static_int8
    checkpoint.save_tree(tmp_path / "q", qparams)
    restored = checkpoint.load_tree(tmp_path / "q", like=qparams)
    chex.assert_trees_all_equal_shapes_and_dtypes(restored, qparams)
    chex.assert_trees_all_equal(restored, qparams)
    x = digits.test.x[:64]
    np.testing.assert_array_equal(jax.jit(qapply)(restored, x), jax.jit(qapply)(qparams, x))


def test_static_with_precomputed_ranges(trained, digits):
    apply_fn, params, _ = trained
    ranges = quant.calibrate(apply_fn, params, [digits.train.x[:256]], method="percentile")
    qapply, qparams = quant.quantize_model(apply_fn, params, ranges=ranges, example=digits.test.x[:8])
    assert set(qparams["activations"]) == set(ranges)
    for name, (lo, hi) in ranges.items():
        np.testing.assert_allclose(qparams["activations"][name], [lo, hi])
    with pytest.raises(ValueError, match="no activation range"):
        qapply({**qparams, "activations": {LAYERS[0]: qparams["activations"][LAYERS[0]]}}, digits.test.x[:8])


def test_cnn_static_int8_agrees_with_float(digits):
    apply_fn, _, params = random_model("cnn", input_shape=(8, 8, 1))
    qapply, qparams = quant.quantize_model(
        apply_fn, params, calibration=[digits.train.x[:256]], calibration_method="minmax"
    )
    x = digits.test.x
    agree = np.mean(np.argmax(jax.jit(qapply)(qparams, x), -1) == np.argmax(jax.jit(apply_fn)(params, x), -1))
    assert agree >= 0.95
    rows = qapply.site_table(qparams)
    assert [r["primitive"] for r in rows] == ["conv_general_dilated"] * 2 + ["dot_general"] * 3
    conv = rows[0]["weight"]
    assert conv.values.dtype == np.int8 and conv.scale.shape == (1, 1, 1, conv.shape[-1])
    # Batch statistics and norm parameters stay float.
    stats = qparams["weights"]["batch_stats"]["norms"][0]
    assert not quant.is_qtensor(stats["mean"]) and stats["mean"].dtype == jnp.float32
    assert isinstance(qapply.apply_fn, hamjax.ApplyFn)


def test_computed_and_conflicting_weights_are_quantized_at_the_op():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 6)), jnp.float32), "v": jnp.asarray(rng.normal(size=(6, 4)))}
    mask = np.triu(np.ones((6, 6), np.float32))

    def f(p, x):
        return jnp.tanh(x @ (p["w"] * mask)) @ p["v"] @ p["v"].T

    x = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
    qapply, qparams = quant.quantize_model(f, params, method="weight_only", bits=4, example=x)
    assert [s.name for s in qapply.sites] == ["dot_general#0", "['v']", "['v']#1"]
    assert qapply.stored == frozenset()  # a computed weight and a leaf used with two layouts
    assert not any(quant.is_qtensor(a) for a in jax.tree.leaves(qparams["weights"], is_leaf=quant.is_qtensor))
    assert all(r["weight"] is None for r in qapply.site_table(qparams))

    def fq(w, axis):
        return quant.fake_quant(w, bits=4, channel_axes=axis)

    @jax.jit
    def expected(p, x):
        return jnp.tanh(x @ fq(p["w"] * mask, 1)) @ fq(p["v"], 1) @ fq(p["v"].T, 1)

    np.testing.assert_allclose(jax.jit(qapply)(qparams, x), expected(params, x), rtol=1e-5, atol=1e-5)


def test_static_mode_matches_a_hand_written_quantized_model():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
        "b1": jnp.asarray(rng.normal(size=8), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
    }

    def f(p, x):
        return jnp.maximum(x @ p["w1"] + p["b1"][None], 0.0) @ p["w2"]

    x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
    qapply, qparams = quant.quantize_model(f, params, calibration=[x], calibration_method="minmax", per_channel=False)
    w1, w2 = (qparams["weights"][k] for k in ("w1", "w2"))
    assert w1.scale.shape == (1, 1)
    (lo1, hi1), (lo2, hi2) = (qparams["activations"][k] for k in ("['w1']", "['w2']"))

    def act(a, lo, hi):
        return quant.fake_quant(a, bits=8, symmetric=False, lo=lo, hi=hi)

    @jax.jit
    def expected(x):
        h = jnp.maximum(act(x, lo1, hi1) @ w1.dequantize() + params["b1"][None], 0.0)
        return act(h, lo2, hi2) @ w2.dequantize()

    np.testing.assert_allclose(jax.jit(qapply)(qparams, x), expected(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- skip


def test_skip_keeps_a_site_float(trained, digits):
    apply_fn, params, _ = trained
    x = digits.test.x[:64]
    qapply, qparams = quant.quantize_model(
        apply_fn, params, calibration=[digits.train.x[:256]], calibration_method="minmax", skip=[LAYERS[0], LAYERS[2]]
    )
    layers = qparams["weights"]["params"]["layers"]
    assert not quant.is_qtensor(layers[0]["kernel"]) and not quant.is_qtensor(layers[2]["kernel"])
    np.testing.assert_array_equal(layers[0]["kernel"], params["params"]["layers"][0]["kernel"])
    assert quant.is_qtensor(layers[1]["kernel"])
    assert [r["name"] for r in qapply.site_table(qparams)] == [LAYERS[1]]
    assert set(qparams["activations"]) == set(LAYERS)
    # Skipping every site leaves the float model.
    qapply, qparams = quant.quantize_model(apply_fn, params, method="dynamic", example=x, skip=LAYERS)
    np.testing.assert_array_equal(jax.jit(qapply)(qparams, x), jax.jit(apply_fn)(params, x))
    with pytest.raises(ValueError, match=r"skip names unknown sites \['nope'\]"):
        quant.quantize_model(apply_fn, params, method="dynamic", example=x, skip=["nope"])


# ---------------------------------------------------------------- quantization-aware training


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_qat_trains(digits, method):
    apply_fn, _, params = random_model("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10))
    ranges = quant.calibrate(apply_fn, params, [digits.train.x[:256]]) if method == "static" else None
    qat = quant.fake_quant_apply(apply_fn, bits=4, method=method, ranges=ranges)
    assert isinstance(qat, hamjax.ApplyFn)
    x, y = digits.train.x[:64], digits.train.y[:64]
    grads = jax.jit(jax.grad(lambda p: cross_entropy(qat(p, x), y)))(params)
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0)
    config = hamjax.TrainConfig(epochs=4, batch_size=64, learning_rate=3e-3)
    result = hamjax.fit(qat, params, digits, config, progress=False)
    assert result.history[-1]["val_accuracy"] > 0.85
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_qat_weight_only_gradient_is_straight_through():
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}
    x = jnp.ones((2, 4))
    qat = quant.fake_quant_apply(lambda p, x: x @ p["w"], bits=4, method="weight_only")
    grads = jax.jit(jax.grad(lambda p: qat(p, x).sum()))(params)
    np.testing.assert_array_equal(grads["w"], np.full((4, 3), 2.0))  # d/dw sum(x @ w) with x = 1, two rows
    out = jax.jit(qat)(params, x)
    np.testing.assert_allclose(out, x @ quant.fake_quant(params["w"], bits=4, channel_axes=1), rtol=1e-6)


def test_vmap_over_bits_through_fake_quant_apply(trained, digits):
    apply_fn, params, _ = trained
    x = digits.test.x[:32]

    def logits(bits):
        return quant.fake_quant_apply(apply_fn, bits=bits, act_bits=bits, method="dynamic")(params, x)

    bits = [3, 4, 8]
    batched = jax.jit(jax.vmap(logits))(jnp.array(bits, jnp.float32))
    loop = jax.jit(logits, static_argnums=0)  # Python-int bits: one trace per width
    for i, b in enumerate(bits):
        np.testing.assert_allclose(batched[i], loop(b), rtol=1e-4, atol=1e-4)
    float_logits = apply_fn(params, x)
    errors = [float(jnp.abs(batched[i] - float_logits).mean()) for i in range(3)]
    assert errors[0] > errors[1] > errors[2]


# ---------------------------------------------------------------- errors


def test_quantize_model_errors(trained, digits):
    apply_fn, params, _ = trained
    x = digits.test.x[:8]
    with pytest.raises(ValueError, match="needs calibration batches or ranges"):
        quant.quantize_model(apply_fn, params, method="static", example=x)
    with pytest.raises(ValueError, match="no calibration batches"):
        quant.quantize_model(apply_fn, params, method="static", calibration=[])
    with pytest.raises(ValueError, match="method must be one of"):
        quant.quantize_model(apply_fn, params, method="int8", example=x)
    with pytest.raises(ValueError, match="pass example="):
        quant.quantize_model(apply_fn, params, method="dynamic")
    for bits in (1, 17, 8.5):
        with pytest.raises(ValueError, match="bits"):
            quant.quantize_model(apply_fn, params, method="dynamic", bits=bits, example=x)
        with pytest.raises(ValueError, match="act_bits"):
            quant.quantize_model(apply_fn, params, method="dynamic", act_bits=bits, example=x)


def test_fake_quant_apply_errors(trained):
    apply_fn, _, _ = trained
    with pytest.raises(ValueError, match="needs ranges"):
        quant.fake_quant_apply(apply_fn, method="static")
    with pytest.raises(ValueError, match="method must be one of"):
        quant.fake_quant_apply(apply_fn, method="minmax")
    for bits in (1, 17):
        with pytest.raises(ValueError, match="bits"):
            quant.fake_quant_apply(apply_fn, bits=bits, method="dynamic")
        with pytest.raises(ValueError, match="act_bits"):
            quant.fake_quant_apply(apply_fn, act_bits=bits, method="dynamic")


@pytest.mark.parametrize(
    "bad, match",
    [
        ({LAYERS[0]: (0.0, 1.0)}, "has no entry for site"),
        ({name: (float("nan"), 1.0) for name in LAYERS}, "must be finite with lo <= hi"),
        ({name: (2.0, 1.0) for name in LAYERS}, "must be finite with lo <= hi"),
    ],
)
def test_bad_precomputed_ranges_fail_before_tracing(trained, digits, bad, match):
    apply_fn, params, _ = trained
    with pytest.raises(ValueError, match=match):
        quant.quantize_model(apply_fn, params, ranges=bad, example=digits.test.x[:8])
