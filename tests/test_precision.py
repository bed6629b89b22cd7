"""Mixed precision: policies, the with_policy transform, loss scaling and training under a policy."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hamjax
from hamjax import precision
from hamjax.precision import DynamicLossScaleState, Policy, dynamic_loss_scale, static_loss_scale, with_policy
from hamjax.train import TrainConfig, TrainState, evaluate, fit, make_train_step

BF16 = "p=f32,c=bf16,o=f32"
F16 = "p=f32,c=f16,o=f32"


# --- Policy ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("p=f32,c=bf16,o=f32", "p=f32,c=bf16,o=f32"),
        ("params=float32,compute=bfloat16,output=float32", "p=f32,c=bf16,o=f32"),
        (" o = f16 , p=float32,  compute=half ", "p=f32,c=f16,o=f16"),
        ("C=BF16,O=F32,P=F32", "p=f32,c=bf16,o=f32"),
        ("bf16", "p=bf16,c=bf16,o=bf16"),
        ("half", "p=f16,c=f16,o=f16"),
        ("float32", "p=f32,c=f32,o=f32"),
    ],
)
def test_parse_accepts_short_long_and_single_dtype_forms(spec, expected):
    policy = Policy.parse(spec)
    assert str(policy) == expected
    assert precision.get_policy(spec) == policy
    assert precision.get_policy(policy) is policy


def test_str_round_trips_for_every_combination():
    for p, c, o in itertools.product(("f32", "bf16", "f16"), repeat=3):
        policy = Policy(p, c, o)
        assert Policy.parse(str(policy)) == policy
        assert hash(Policy.parse(str(policy))) == hash(policy)
    policy = Policy(jnp.float32, jnp.bfloat16, np.float32)
    assert (policy.param_dtype, policy.compute_dtype, policy.output_dtype) == (
        jnp.dtype("float32"),
        jnp.dtype("bfloat16"),
        jnp.dtype("float32"),
    )
    assert repr(policy) == "Policy.parse('p=f32,c=bf16,o=f32')"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty policy string"),
        ("p=f32,c=bf16", "missing output"),
        ("c=bf16", "missing params, output"),
        ("p=f32,c=bf17,o=f32", "unknown dtype 'bf17'.*f32/float32"),
        ("p=f32,x=bf16,o=f32", "unknown key 'x'.*p/params"),
        ("p=f32,p=bf16,c=f32,o=f32", "params is given twice"),
        ("p=f32,c,o=f32", "bad part 'c'"),
        ("p=f32,c=,o=f32", "bad part 'c='"),
        ("int8", "unknown dtype 'int8'"),
        ("f64", "jax_enable_x64"),
        ("p=f32,c=f64,o=f32", "jax_enable_x64"),
        (None, "expected a string"),
    ],
)
def test_bad_policies_name_the_bad_part_and_the_accepted_forms(spec, match):
    with pytest.raises(ValueError, match=match):
        Policy.parse(spec)


def test_policy_fields_must_be_floating_dtypes():
    with pytest.raises(ValueError, match=r"Policy.compute_dtype: int32 is not a floating dtype"):
        Policy(jnp.float32, jnp.int32, jnp.float32)
    with pytest.raises(ValueError, match=r"Policy.param_dtype: unknown dtype 'fp8'"):
        Policy("fp8", "f32", "f32")


def _mixed_tree():
    return {
        "w": jnp.ones((2, 3)),
        "h": jnp.ones(3, jnp.float16),
        "host": np.ones(2, np.float32),
        "count": jnp.arange(3),
        "mask": jnp.array([True, False]),
        "key": jax.random.key(0),
        "none": None,
        "python": 0.5,
    }


def test_casts_touch_floating_leaves_only():
    tree = _mixed_tree()
    policy = Policy.parse("p=f16,c=bf16,o=f32")
    for cast, dtype in (
        (policy.cast_to_compute, jnp.bfloat16),
        (policy.cast_to_param, jnp.float16),
        (policy.cast_to_output, jnp.float32),
    ):
        out = cast(tree)
        assert out["w"].dtype == out["h"].dtype == out["host"].dtype == dtype
        assert isinstance(out["host"], np.ndarray)  # host data stays on the host
        for name in ("count", "mask", "key", "python"):
            assert out[name] is tree[name], name
        assert out["none"] is None
    np.testing.assert_array_equal(policy.cast_to_compute(tree)["w"], np.ones((2, 3)))


def test_casts_work_under_jit_and_vmap():
    policy = Policy.parse(BF16)
    tree = {k: v for k, v in _mixed_tree().items() if k not in ("none", "python", "host")}
    out = jax.jit(policy.cast_to_compute)(tree)
    assert out["w"].dtype == jnp.bfloat16 and out["count"].dtype == jnp.int32 and out["mask"].dtype == jnp.bool_
    assert jax.dtypes.issubdtype(out["key"].dtype, jax.dtypes.prng_key)
    batched = jax.vmap(policy.cast_to_compute)({"w": jnp.ones((4, 3)), "i": jnp.arange(4)})
    assert batched["w"].dtype == jnp.bfloat16 and batched["w"].shape == (4, 3) and batched["i"].dtype == jnp.int32


# --- with_policy ---------------------------------------------------------------------------------------------------


def _linear(p, x):
    return x @ p["w"] + p["b"][None]


def _linear_params():
    k1, k2 = jax.random.split(jax.random.key(1))
    return {"w": jax.random.normal(k1, (16, 8)), "b": jax.random.normal(k2, (8,))}


def _dot_dtypes(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [tuple(v.aval.dtype.name for v in e.invars) for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_plain_function_computes_in_the_compute_dtype_and_outputs_the_output_dtype():
    params, x = _linear_params(), jax.random.normal(jax.random.key(2), (4, 16))
    f = with_policy(_linear, BF16)
    y = f(params, x)
    assert y.dtype == jnp.float32
    assert _dot_dtypes(f, params, x) == [("bfloat16", "bfloat16")]
    bf = jnp.bfloat16
    expected = (x.astype(bf) @ params["w"].astype(bf) + params["b"].astype(bf)[None]).astype(jnp.float32)
    np.testing.assert_array_equal(y, expected)
    assert not np.allclose(y, _linear(params, x), rtol=1e-4, atol=1e-4)  # bf16 rounding is visible: it did run in bf16
    np.testing.assert_allclose(y, _linear(params, x), rtol=0.05, atol=0.1)
    assert f.__name__ == "_linear" and precision.policy_of(f) == Policy.parse(BF16)


def test_output_dtype_and_non_floating_inputs():
    f = with_policy(lambda p, x, scale=1.0: (x, p["w"] * scale), "p=f32,c=f16,o=bf16")
    idx, w = f({"w": jnp.ones(2)}, jnp.arange(3), scale=2.0)
    assert idx.dtype == jnp.int32 and w.dtype == jnp.bfloat16 and w.tolist() == [2.0, 2.0]


def test_gradients_with_respect_to_float32_params_are_float32():
    params, x = _linear_params(), jax.random.normal(jax.random.key(2), (4, 16))
    for spec in (BF16, F16):
        f = with_policy(_linear, spec)
        grads = jax.grad(lambda p, f=f: jnp.sum(f(p, x) ** 2))(params)
        exact = jax.grad(lambda p: jnp.sum(_linear(p, x) ** 2))(params)
        assert jax.tree.map(lambda g: g.dtype, grads) == {"w": jnp.float32, "b": jnp.float32}
        for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(exact), strict=True):
            np.testing.assert_allclose(g, e, rtol=0.05, atol=0.3)


def test_rewrapping_replaces_the_policy():
    params, x = _linear_params(), jnp.ones((2, 16))
    f = with_policy(with_policy(_linear, BF16), "f32")
    assert _dot_dtypes(f, params, x) == [("float32", "float32")]
    assert precision.policy_of(f) == Policy.parse("f32") and precision.policy_of(_linear) is None
    with pytest.raises(TypeError, match="keep must be a tuple"):
        with_policy(_linear, BF16, keep="batch_stats")


def _cnn():
    return hamjax.functional(hamjax.models.build("cnn", input_shape=(8, 8, 1), channels=(8, 16), dense=(32,)))


def _conv_dtypes(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [e.invars[0].aval.dtype.name for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]


def test_apply_fn_keeps_the_training_protocol_and_batch_stats_dtypes():
    apply_fn, variables = _cnn()
    f = with_policy(apply_fn, BF16)
    assert isinstance(f, hamjax.ApplyFn) and f.collections == apply_fn.collections
    x, rng = jax.random.normal(jax.random.key(0), (16, 8, 8, 1)), jax.random.key(1)

    @jax.jit
    def run(variables, x, rng):
        return (
            f(variables, x, train=True, rng=rng, mutable=True),
            f(variables, x),
            apply_fn(variables, x, train=True, rng=rng, mutable=True),
        )

    (y, new), y_eval, (_, ref) = run(variables, x, rng)
    assert y.dtype == y_eval.dtype == jnp.float32 and y.shape == (16, 10)
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new))
    # the running statistics moved as the float32 model moves them
    for a, b in zip(jax.tree.leaves(new["batch_stats"]), jax.tree.leaves(ref["batch_stats"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)
    # hamjax.train sees an ApplyFn and gets the updated collections back
    logits, stats = jax.jit(lambda v: hamjax._base.call_model(f, v, x, train=True, rng=rng))(variables)
    assert logits.dtype == jnp.float32 and stats["batch_stats"]["norms"][0]["var"].dtype == jnp.float32


def test_keep_decides_whether_batch_norm_computes_in_the_compute_dtype():
    apply_fn, variables = _cnn()
    x = jnp.ones((2, 8, 8, 1))
    # kept float32 statistics promote the layers after the first batch norm to float32 (NNX promotes dtypes)
    assert _conv_dtypes(with_policy(apply_fn, BF16), variables, x) == ["bfloat16", "float32"]
    assert _conv_dtypes(with_policy(apply_fn, BF16, keep=()), variables, x) == ["bfloat16", "bfloat16"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # NNX writes its float32 update into the bfloat16 statistics
def test_kept_statistics_accumulate_what_bfloat16_statistics_round_away():
    apply_fn, variables = hamjax.functional(nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    z = jax.random.normal(jax.random.key(0), (1024, 4))
    x = (z - z.mean(0)[None]) / z.std(0)[None] * jnp.sqrt(0.88)  # batch variance 0.88: a 0.0012 step from 1.0
    _, exact = apply_fn(variables, x, train=True, mutable=True)
    _, kept = with_policy(apply_fn, BF16)(variables, x, train=True, mutable=True)
    _, rounded = with_policy(apply_fn, BF16, keep=())(variables, x, train=True, mutable=True)
    var = exact["batch_stats"]["var"]
    np.testing.assert_allclose(var, 0.99 + 0.01 * 0.88, rtol=1e-5)  # momentum 0.99
    np.testing.assert_allclose(kept["batch_stats"]["var"], var, rtol=1e-5)  # the batch itself was cast to bf16
    assert rounded["batch_stats"]["var"].dtype == jnp.float32
    # in bfloat16 the 0.0012 step is below half an ulp (2**-9) and NNX's momentum rounds to 0.98828125:
    # the update lands on the wrong grid point, 0.99609375
    assert float(jnp.min(jnp.abs(rounded["batch_stats"]["var"] - var))) > 2e-3


# --- loss scaling --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_scale": 0.0}, "initial_scale must be finite and > 0, got 0.0"),
        ({"initial_scale": float("inf")}, "initial_scale must be finite and > 0, got inf"),
        ({"initial_scale": "big"}, "initial_scale must be a number, got 'big'"),
        ({"growth_interval": 0}, "growth_interval must be an int >= 1, got 0"),
        ({"growth_interval": 2.5}, "growth_interval must be an int >= 1, got 2.5"),
        ({"growth_interval": True}, "growth_interval must be an int >= 1, got True"),
        ({"growth_factor": 1.0}, "growth_factor must be > 1, got 1.0"),
        ({"backoff_factor": 0.0}, "backoff_factor must be finite and > 0, got 0.0"),
        ({"backoff_factor": 1.0}, r"backoff_factor must be in \(0, 1\), got 1.0"),
        ({"min_scale": -1.0}, "min_scale must be finite and > 0, got -1.0"),
        ({"initial_scale": 2.0, "min_scale": 4.0}, "min_scale=4.0 must be <= initial_scale=2.0"),
    ],
)
def test_dynamic_loss_scale_validates_its_arguments_eagerly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dynamic_loss_scale(optax.sgd(0.1), **kwargs)


def test_static_loss_scale_validates_its_scale():
    with pytest.raises(ValueError, match="static_loss_scale: scale must be finite and > 0, got 0"):
        static_loss_scale(optax.sgd(0.1), 0)


def _params():
    k1, k2 = jax.random.split(jax.random.key(3))
    return {"w": jax.random.normal(k1, (5, 4)), "b": jax.random.normal(k2, (4,))}


def _grads(t):
    return jax.tree.map(lambda p: jnp.cos(p * (t + 1)), _params())


def test_finite_steps_apply_the_inner_update_exactly():
    inner = optax.adam(1e-2)
    opt = dynamic_loss_scale(inner, initial_scale=2.0**10, growth_interval=100)
    params = _params()
    state, ref_state = opt.init(params), inner.init(params)
    assert isinstance(state, DynamicLossScaleState) and state.loss_scale.dtype == jnp.float32
    for t in range(3):
        g = _grads(t)
        scaled = jax.tree.map(lambda a, s=state: a * s.loss_scale, g)
        updates, state = opt.update(scaled, state, params)
        ref_updates, ref_state = inner.update(g, ref_state, params)
        jax.tree.map(np.testing.assert_array_equal, updates, ref_updates)
        jax.tree.map(np.testing.assert_array_equal, state.inner_state, ref_state)
    assert (float(state.loss_scale), int(state.good_steps), int(state.skipped)) == (1024.0, 3, 0)


def test_a_non_finite_step_is_skipped_and_halves_the_scale():
    opt = dynamic_loss_scale(optax.adam(1e-2), initial_scale=64.0)
    params = _params()
    state = opt.init(params)
    _, state = opt.update(_grads(0), state, params)
    for bad in (jnp.inf, -jnp.inf, jnp.nan):
        g = _grads(1)
        g["w"] = g["w"].at[2, 1].set(bad)
        updates, new = opt.update(g, state, params)
        assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
        assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
        jax.tree.map(np.testing.assert_array_equal, new.inner_state, state.inner_state)
        assert float(new.loss_scale) == float(state.loss_scale) / 2
        assert (int(new.good_steps), int(new.skipped)) == (0, int(state.skipped) + 1)
        state = new
    assert float(state.loss_scale) == 8.0 and int(state.skipped) == 3


def test_scale_grows_after_growth_interval_good_steps_and_respects_min_scale():
    opt = dynamic_loss_scale(optax.sgd(0.1), initial_scale=4.0, growth_interval=3, growth_factor=4.0, min_scale=2.0)
    params = _params()
    state = opt.init(params)
    scales = []
    for t in range(7):
        _, state = opt.update(_grads(t), state, params)
        scales.append((float(state.loss_scale), int(state.good_steps)))
    assert scales == [(4.0, 1), (4.0, 2), (16.0, 0), (16.0, 1), (16.0, 2), (64.0, 0), (64.0, 1)]
    inf = jax.tree.map(lambda g: g.at[0].set(jnp.inf), _grads(0))
    for expected in (32.0, 16.0, 8.0, 4.0, 2.0, 2.0):
        _, state = opt.update(inf, state, params)
        assert float(state.loss_scale) == expected
    huge = dynamic_loss_scale(optax.sgd(0.1), initial_scale=3e38, growth_interval=1)
    _, hs = huge.update(_grads(0), huge.init(params), params)
    assert float(hs.loss_scale) == pytest.approx(3e38)  # growth that would overflow to inf keeps the scale


def test_gradients_keep_their_dtype_and_static_scale_never_changes():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    opt = static_loss_scale(optax.sgd(1.0), 256.0)
    state = opt.init(params)
    g = jax.tree.map(lambda p: (p * 256).astype(jnp.bfloat16), params)
    updates, state = opt.update(g, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    jax.tree.map(lambda u, p: np.testing.assert_array_equal(u, -p), updates, params)
    bad = jax.tree.map(lambda a: a.at[0].set(jnp.nan), g)
    for _ in range(3):
        updates, state = opt.update(bad, state, params)
    assert float(state.loss_scale) == 256.0 and int(state.skipped) == 3 and int(state.good_steps) == 0


def test_loss_scaling_recovers_gradients_that_underflow_in_float16():
    f = with_policy(lambda p, x: p["w"] * 1e-4 * x, F16)
    params, x = {"w": jnp.ones(3)}, jnp.full(3, 1e-4)  # dy/dw = 1e-8: below float16's smallest subnormal

    def grads(scale):
        return jax.grad(lambda p: jnp.sum(f(p, x)).astype(jnp.float32) * scale)(params)

    assert float(jnp.abs(grads(1.0)["w"]).max()) == 0.0
    opt = dynamic_loss_scale(optax.sgd(1.0))
    state = opt.init(params)
    updates, _ = opt.update(grads(precision.loss_scale_of(state)), state, params)
    np.testing.assert_allclose(updates["w"], -1e-8, rtol=0.01)


def _quadratic_step(opt):
    def step(carry, bad):
        params, state = carry
        loss = lambda p: precision.loss_scale_of(state) * jnp.sum((p["w"] - 3.0) ** 2)  # noqa: E731
        g = jax.grad(loss)(params)
        g = jax.tree.map(lambda a: jnp.where(bad, jnp.inf, a), g)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), state.loss_scale

    return step


def test_under_jit_and_lax_scan_with_an_overflow_injected():
    opt = dynamic_loss_scale(optax.adam(0.1), initial_scale=2.0**12, growth_interval=2)
    params = {"w": jnp.zeros(4)}
    step = _quadratic_step(opt)
    bad = jnp.array([False, False, True, False, False, False])
    (p_scan, s_scan), scales = jax.jit(lambda c: jax.lax.scan(step, c, bad))((params, opt.init(params)))
    carry = (params, opt.init(params))
    for b in bad:
        carry, _ = step(carry, b)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), (p_scan, s_scan), carry)
    assert scales.tolist() == [4096.0, 8192.0, 4096.0, 4096.0, 8192.0, 8192.0]
    assert int(s_scan.skipped) == 1
    # the skipped step changed nothing: five adam steps on the plain quadratic give the same params
    inner, p, s = optax.adam(0.1), params, optax.adam(0.1).init(params)
    for _ in range(5):
        u, s = inner.update(jax.grad(lambda q: jnp.sum((q["w"] - 3.0) ** 2))(p), s, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p_scan["w"], p["w"], rtol=1e-6)


def test_loss_scale_of_finds_the_scale_anywhere_in_a_state():
    params = _params()
    assert float(precision.loss_scale_of(optax.adam(1e-3).init(params))) == 1.0
    assert precision.loss_scale_of(optax.adam(1e-3).init(params)).dtype == jnp.float32
    chained = optax.chain(optax.clip_by_global_norm(1.0), dynamic_loss_scale(optax.adam(1e-3), initial_scale=8.0))
    assert float(precision.loss_scale_of(chained.init(params))) == 8.0
    nested = dynamic_loss_scale(dynamic_loss_scale(optax.sgd(0.1)))
    with pytest.raises(ValueError, match="more than one loss_scale"):
        precision.loss_scale_of(nested.init(params))


# --- training under a policy ---------------------------------------------------------------------------------------


def test_train_config_validates_precision_and_loss_scale():
    with pytest.raises(ValueError, match=r"TrainConfig.precision='p=f32,c=bf17,o=f32' is not a policy.*'bf17'"):
        TrainConfig(precision="p=f32,c=bf17,o=f32")
    with pytest.raises(ValueError, match=r"TrainConfig.loss_scale must be one of .*got 'always'"):
        TrainConfig(loss_scale="always")
    assert TrainConfig(precision=Policy.parse(BF16)).precision == BF16


def test_train_step_differentiates_the_scaled_loss():
    apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p["w"]  # noqa: E731
    params = {"w": jax.random.normal(jax.random.key(0), (64, 10)) * 0.1}
    x, y = jax.random.normal(jax.random.key(1), (32, 8, 8, 1)), jnp.arange(32) % 10
    plain, scaled = optax.sgd(0.5), dynamic_loss_scale(optax.sgd(0.5), initial_scale=2.0**8)
    out = {}
    for name, opt in (("plain", plain), ("scaled", scaled)):
        state = TrainState(jax.tree.map(jnp.array, params), opt.init(params), jnp.asarray(0))
        state, metrics = make_train_step(apply_fn, opt)(state, x, y)
        out[name] = (state.params, metrics)
    np.testing.assert_array_equal(out["scaled"][0]["w"], out["plain"][0]["w"])
    assert float(out["scaled"][1]["loss"]) == float(out["plain"][1]["loss"])  # metrics report the unscaled loss
    assert float(out["scaled"][1]["loss_scale"]) == 256.0 and float(out["plain"][1]["loss_scale"]) == 1.0


def _mlp():
    return hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))


def test_mixed_precision_training_matches_float32_accuracy(digits):
    config = TrainConfig(epochs=4, batch_size=32, learning_rate=5e-3)
    accuracy = {}
    for spec in (None, BF16, F16):
        apply_fn, params = _mlp()
        result = fit(apply_fn, params, digits, dataclasses.replace(config, precision=spec), progress=False)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))
        served = with_policy(apply_fn, spec) if spec else apply_fn
        accuracy[spec] = evaluate(served, result.params, digits.test)["accuracy"]
        if spec == F16:  # "auto" turned dynamic loss scaling on for float16 compute
            assert isinstance(result.state.opt_state, DynamicLossScaleState)
            assert float(result.state.opt_state.loss_scale) >= 1.0
        else:
            assert float(precision.loss_scale_of(result.state.opt_state)) == 1.0
    assert accuracy[None] > 0.93, accuracy
    assert abs(accuracy[BF16] - accuracy[None]) <= 0.03, accuracy
    assert abs(accuracy[F16] - accuracy[None]) <= 0.03, accuracy


def test_param_dtype_is_kept_and_dynamic_can_be_forced(digits):
    apply_fn, params = _mlp()
    config = TrainConfig(
        epochs=2, batch_size=64, learning_rate=3e-3, precision="p=bf16,c=bf16,o=f32", loss_scale="dynamic"
    )
    result = fit(apply_fn, params, digits, config, progress=False)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(result.params))
    assert isinstance(result.state.opt_state, DynamicLossScaleState)
    acc = evaluate(with_policy(apply_fn, config.precision), result.params, digits.test)["accuracy"]
    assert acc > 0.8  # all-bfloat16 training rounds small Adam steps away, but still learns
    config = TrainConfig(epochs=1, batch_size=64, precision=F16, loss_scale="none")
    none = fit(apply_fn, params, digits, config, progress=False)
    assert float(precision.loss_scale_of(none.state.opt_state)) == 1.0


class _Stop(Exception):
    pass


def test_interrupted_float16_run_resumes_to_the_same_result(tmp_path, digits):
    apply_fn, params = _mlp()
    config = TrainConfig(epochs=2, batch_size=64, checkpoint_every=9, precision=F16)
    straight = fit(apply_fn, params, digits, config, progress=False)

    def stop_at_23(step, state, metrics):
        if step == 23:
            raise _Stop

    with pytest.raises(_Stop):
        fit(apply_fn, params, digits, config, checkpoint_dir=str(tmp_path), progress=False, callback=stop_at_23)
    resumed = fit(apply_fn, params, digits, config, checkpoint_dir=str(tmp_path), progress=False)
    assert resumed.resumed_from == 18
    assert isinstance(resumed.state.opt_state, DynamicLossScaleState)
    jax.tree.map(np.testing.assert_array_equal, (resumed.params, resumed.state), (straight.params, straight.state))
