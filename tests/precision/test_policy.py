"""Mixed precision: policies, the with_policy transform and training under a policy (loss scaling: test_loss_scale.py)."""

import dataclasses
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hamjax
from hamjax import precision
from hamjax.precision import DynamicLossScaleState, Policy, dynamic_loss_scale, with_policy
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


def test_is_floating_picks_the_leaves_a_policy_casts():
    tree = _mixed_tree()
    assert [k for k, v in tree.items() if precision.is_floating(v)] == ["w", "h", "host"]


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
        chex.assert_trees_all_close(grads, exact, rtol=0.05, atol=0.3)


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
    chex.assert_trees_all_equal_structs(new, variables)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new))
    # the running statistics moved as the float32 model moves them
    chex.assert_trees_all_close(new["batch_stats"], ref["batch_stats"], rtol=2e-3, atol=2e-3)
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


# --- training under a policy ---------------------------------------------------------------------------------------


def test_train_config_validates_precision_and_loss_scale():
    with pytest.raises(ValueError, match=r"TrainConfig: precision='p=f32,c=bf17,o=f32' is not a policy.*'bf17'"):
        TrainConfig(precision="p=f32,c=bf17,o=f32")
    with pytest.raises(ValueError, match=r"TrainConfig: loss_scale must be one of .*got 'always'"):
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
    chex.assert_trees_all_equal((resumed.params, resumed.state), (straight.params, straight.state))
