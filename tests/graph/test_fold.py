"""Batch-norm folding on the reference CNN (NNX), a Linen conv + BatchNorm model and plain jnp affines."""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import normal, random_model

import hamjax
from hamjax import graph


def count_eqns(jaxpr) -> int:
    return sum(
        1 + sum(count_eqns(getattr(s, "jaxpr", s)) for s in jax.extend.core.jaxprs_in_params(e.params))
        for e in jaxpr.eqns
    )


def rel_error(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.fixture(scope="module")
def cnn():
    apply_fn, _, params = random_model("cnn", input_shape=(8, 8, 1), channels=(4, 8), dense=(16,))
    x = normal(np.random.default_rng(1), (6, 8, 8, 1))
    folded_apply, folded_params = graph.fold(apply_fn, params, x[:2])
    return apply_fn, params, x, folded_apply, folded_params


class ConvBN(nn.Module):
    running: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=self.running and not train)(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = nn.Dense(8, use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=self.running and not train)(x)
        return nn.Dense(3)(nn.relu(x))


def linen_model(running=True):
    model, x = ConvBN(running), normal(np.random.default_rng(2), (4, 6, 6, 2))
    variables = model.init(jax.random.key(0), x)
    rng = np.random.default_rng(3)
    stats = jax.tree.map(lambda a: jnp.asarray(0.5 + rng.random(a.shape), a.dtype), variables["batch_stats"])
    scales = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), variables["params"])
    apply_fn, variables = hamjax.linen_functional(model, {"params": scales, "batch_stats": stats})
    return apply_fn, variables, x


def test_cnn_folds_both_norms_into_the_convolutions(cnn):
    apply_fn, params, x, folded_apply, folded_params = cnn
    sites = graph.foldable(apply_fn, params, x)
    assert [s.kernel for s in sites] == ["params/convs/0/kernel", "params/convs/1/kernel"]
    assert all(s.ops == ("add", "sub", "mul", "add") for s in sites)
    assert "batch_stats" not in folded_params and "norms" not in folded_params["params"]
    assert rel_error(jax.jit(folded_apply)(folded_params, x), apply_fn(params, x)) <= 1e-5


def test_folded_jaxpr_has_fewer_ops(cnn):
    apply_fn, params, x, folded_apply, folded_params = cnn
    before = count_eqns(jax.make_jaxpr(apply_fn)(params, x).jaxpr)
    after = jax.make_jaxpr(folded_apply)(folded_params, x).jaxpr
    assert count_eqns(after) < before
    prims = collections.Counter(e.primitive.name for e in after.eqns)
    assert prims["rsqrt"] == 0 and prims["sub"] == 0 and prims["mul"] == 0


def test_folded_model_takes_any_batch_size(cnn):
    apply_fn, params, _, folded_apply, folded_params = cnn
    one = normal(np.random.default_rng(4), (1, 8, 8, 1))
    assert rel_error(folded_apply(folded_params, one), apply_fn(params, one)) <= 1e-5


def test_folded_model_keeps_bfloat16_and_does_not_retrace():
    rng = np.random.default_rng(12)
    p = {"k": normal(rng, (3, 3, 2, 4)), "d": 1.0 + jnp.abs(normal(rng, (4,))), "s": normal(rng, (4,))}
    p["t"] = normal(rng, (4,))
    x = normal(rng, (3, 5, 5, 2))
    folded_apply, folded_params = graph.fold(conv_affine, p, x)
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), folded_params)
    y = jax.jit(folded_apply)(half, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(y.astype(jnp.float32) - conv_affine(p, x)))) <= 0.1
    traces = []
    counted = jax.jit(lambda q, xx: (traces.append(1), folded_apply(q, xx))[1])
    counted(folded_params, x)
    counted(folded_params, x + 1.0)
    assert len(traces) == 1


def test_linen_conv_and_dense_batch_norms_fold():
    apply_fn, variables, x = linen_model()
    sites = graph.foldable(apply_fn, variables, x)
    assert len(sites) == 2
    folded_apply, folded_params = graph.fold(apply_fn, variables, x)
    assert "batch_stats" not in folded_params and set(folded_params["params"]) == {"Conv_0", "Dense_0", "Dense_1"}
    assert folded_params["params"]["Dense_0"]["bias"].shape == (8,)  # a bias added where the layer had none
    assert rel_error(jax.jit(folded_apply)(folded_params, x), apply_fn(variables, x)) <= 1e-5


def test_train_mode_norm_is_refused():
    def batch_norm(p, x):
        z = x @ p["w"]
        return (z - z.mean(0, keepdims=True)) * jax.lax.rsqrt(z.var(0, keepdims=True) + 1e-5)

    p = {"w": normal(np.random.default_rng(9), (4, 4))}
    with pytest.raises(ValueError, match=r"fold: the norm at \"\['w'\]\" uses batch statistics \(train mode\)"):
        graph.fold(batch_norm, p, jnp.ones((2, 4)))


def test_linen_train_mode_is_refused_before_tracing():
    apply_fn, variables, x = linen_model()
    with pytest.raises(ValueError, match="fold: train=True makes every norm use batch statistics"):
        graph.fold(apply_fn, variables, x, train=True)


def test_train_keyword_is_refused_before_tracing():
    def never_traced(p, x, **kw):
        raise AssertionError("traced")

    with pytest.raises(ValueError, match="fold: train=True .* fold needs inference mode"):
        graph.fold(never_traced, {"w": jnp.ones((2, 2))}, jnp.ones((1, 2)), train=True)


def conv_affine(p, x):
    z = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = -(z / p["d"][None, None, None]) * 2.0
    return jnp.tanh(3.0 - z * p["s"][None, None, None] + p["t"][None, None, None])


def test_plain_conv_with_div_neg_and_reversed_sub_folds():
    rng = np.random.default_rng(5)
    p = {"k": normal(rng, (3, 3, 2, 4)), "d": 1.0 + jnp.abs(normal(rng, (4,))), "s": normal(rng, (4,))}
    p["t"] = normal(rng, (4,))
    x = normal(rng, (3, 5, 5, 2))
    folded_apply, folded_params = graph.fold(conv_affine, p, x)
    assert sorted(folded_params) == ["bias", "k"]
    assert graph.foldable(conv_affine, p, x)[0].ops == ("div", "neg", "mul", "mul", "sub", "add")
    assert rel_error(folded_apply(folded_params, x), conv_affine(p, x)) <= 1e-5


def test_residual_add_and_spatial_scale_are_not_folded():
    rng = np.random.default_rng(6)
    p = {"w": normal(rng, (4, 4)), "c": normal(rng, (3, 4))}

    def residual(p, x):
        return x @ p["w"] + x  # the other operand depends on the input

    def row_scaled(p, x):
        return (x @ p["w"]) * p["c"]  # varies along the batch axis, not per channel

    x = normal(rng, (3, 4))
    assert graph.foldable(residual, p, x) == () and graph.foldable(row_scaled, p, x) == ()
    assert graph.fold(residual, p, x)[0] is residual


def test_layer_norm_after_dense_is_not_train_mode():
    p = {"w": normal(np.random.default_rng(7), (4, 4))}

    def layer_norm(p, x):
        z = x @ p["w"]
        return (z - z.mean(-1, keepdims=True)) * jax.lax.rsqrt(z.var(-1, keepdims=True) + 1e-5)

    assert graph.foldable(layer_norm, p, jnp.ones((2, 4))) == ()


def test_shared_kernel_is_left_alone():
    p = {"w": normal(np.random.default_rng(8), (4, 4)), "s": jnp.full((4,), 2.0)}

    def shared(p, x):
        return (x @ p["w"]) * p["s"][None] @ p["w"]

    assert graph.foldable(shared, p, jnp.ones((2, 4))) == ()


def test_kernel_read_by_another_op_is_left_alone():
    p = {"w": normal(np.random.default_rng(10), (4, 4)), "s": jnp.full((4,), 2.0)}

    def also_reads_w(p, x):
        y = (x @ p["w"]) * p["s"][None]
        return y + jnp.tanh(y) * jnp.sum(p["w"])

    x = normal(np.random.default_rng(11), (2, 4))
    assert graph.foldable(also_reads_w, p, x) == ()


def test_fold_then_quantize_calibrates_the_folded_weights(cnn):
    apply_fn, params, x, folded_apply, folded_params = cnn
    qapply, qparams = hamjax.quant.quantize_model(
        folded_apply, folded_params, calibration=[x], calibration_method="minmax"
    )
    q = qparams["weights"]["params"]["convs"]["0"]["kernel"]
    kernel = np.asarray(folded_params["params"]["convs"]["0"]["kernel"])
    assert np.max(np.abs(np.asarray(q.dequantize()).reshape(kernel.shape) - kernel)) <= np.max(np.abs(kernel)) / 100
    agree = jnp.mean(jnp.argmax(jax.jit(qapply)(qparams, x), -1) == jnp.argmax(apply_fn(params, x), -1))
    assert float(agree) >= 0.8


@pytest.mark.slow
def test_folded_cnn_exports_without_normalisation(cnn, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, _, x, folded_apply, folded_params = cnn
    result = hamjax.export.onnx(folded_apply, folded_params, x[:1], tmp_path / "folded.onnx", check_data=x)
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "folded.onnx")).graph.node)
    assert not {"Sub", "Div", "Sqrt", "Mul", "BatchNormalization"} & set(ops), ops
    assert all(check.max_relative_error <= 1e-5 for check in result.checks)
