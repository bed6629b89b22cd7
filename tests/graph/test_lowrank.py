"""Low-rank factorisation on plain jnp, Linen and NNX models: ranks, budgets, vmap over energies, training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import normal, plain_mlp, random_model

import hamjax
from hamjax import graph


def n_params(tree) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def mlp():
    apply_fn, params = plain_mlp()
    return apply_fn, params, normal(np.random.default_rng(0), (5, 64))


def truncated(w, r):
    a, s, bt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    return (a[:, :r] * s[:r]) @ bt[:r]


def test_rank_gives_the_truncated_svd(mlp):
    apply_fn, params, x = mlp
    lapply, lparams = graph.lowrank(apply_fn, params, x, rank=6)
    assert lparams["w1"].u.shape == (64, 6) and lparams["w1"].v.shape == (6, 64)
    w1 = truncated(params["w1"], 6)
    w2 = truncated(params["w2"], 6)
    h = np.maximum(np.asarray(x, np.float64) @ w1 + np.asarray(params["b1"]), 0.0)
    expected = h @ w2 + np.asarray(params["b2"])
    np.testing.assert_allclose(jax.jit(lapply)(lparams, x), expected, rtol=1e-4, atol=1e-4)


def test_energy_picks_the_smallest_rank_keeping_it():
    rng = np.random.default_rng(1)
    a, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    b, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    s = np.array([10.0, 5.0, 2.0, 1.0] + [0.01] * 8)
    w = jnp.asarray((a[:, :12] * s) @ b.T, jnp.float32)
    total = np.sum(s**2)
    f = lambda p, x: x @ p["w"]  # noqa: E731
    _, q = graph.lowrank(f, {"w": w}, jnp.ones((1, 20)), energy=float((100 + 25) / total))
    assert q["w"].u.shape == (20, 2)
    _, q = graph.lowrank(f, {"w": w}, jnp.ones((1, 20)), energy=float((100 + 25 + 4) / total) + 1e-4)
    assert q["w"].u.shape == (20, 4)


def test_budget_over_the_model_keeps_the_parameter_fraction(mlp):
    apply_fn, params, x = mlp
    _, lparams = graph.lowrank(apply_fn, params, x, budget=0.5)
    assert n_params(lparams) <= 0.5 * n_params(params)
    assert isinstance(lparams["w1"], graph.Factors)


def test_budget_per_layer(mlp):
    apply_fn, params, x = mlp
    _, lparams = graph.lowrank(apply_fn, params, x, budget=0.25, scope="layer")
    assert lparams["w1"].u.shape[-1] == int(0.25 * 64 * 64 // 128)
    assert lparams["w2"].u.shape == (64, 2)  # 2 * (64 + 10) < 640
    assert n_params(lparams["w1"]) <= 0.25 * 64 * 64


def test_rank_multiple_rounds_chosen_ranks_down(mlp):
    apply_fn, params, x = mlp
    _, lparams = graph.lowrank(apply_fn, params, x, budget=0.5, rank_multiple=8)
    assert n_params(lparams) <= 0.5 * n_params(params)
    ranks = [lparams[k].u.shape[-1] for k in ("w1", "w2") if isinstance(lparams[k], graph.Factors)]
    assert ranks and all(r % 8 == 0 for r in ranks)
    with pytest.raises(ValueError, match="lowrank: rank_multiple must be an integer >= 1, got 0"):
        graph.lowrank(apply_fn, params, x, budget=0.5, rank_multiple=0)


def test_skip_keeps_a_layer_dense(mlp):
    apply_fn, params, x = mlp
    _, lparams = graph.lowrank(apply_fn, params, x, rank=4, skip=["w2"])
    assert isinstance(lparams["w1"], graph.Factors) and not isinstance(lparams["w2"], graph.Factors)


def test_transposed_square_kernel():
    w = normal(np.random.default_rng(2), (6, 6))
    f = lambda p, x: x @ p["w"].T  # noqa: E731
    x = normal(np.random.default_rng(3), (3, 6))
    lapply, lparams = graph.lowrank(f, {"w": w}, x, rank=2)
    np.testing.assert_allclose(lapply(lparams, x), np.asarray(x) @ truncated(np.asarray(w).T, 2), atol=1e-4)


def test_convolutions_factor_and_full_rank_is_exact():
    apply_fn, _, params = random_model("cnn", input_shape=(8, 8, 1), channels=(4, 8), dense=(16,))
    x = normal(np.random.default_rng(4), (3, 8, 8, 1))
    lapply, lparams = graph.lowrank(apply_fn, params, x, rank=4)
    conv = lparams["params"]["convs"][1]["kernel"]
    assert conv.u.shape == (5, 5, 4, 4) and conv.v.shape == (4, 8) and conv.shape == (5, 5, 4, 8)
    lapply, lparams = graph.lowrank(apply_fn, params, x, rank=1, skip=["params/dense/0/kernel"])
    kernel = np.asarray(params["params"]["convs"][0]["kernel"])  # 25 x 4: rank 4 is exact
    exact = {**params, "params": {**params["params"], "convs": {**params["params"]["convs"]}}}
    u, v = graph.svd_factors(kernel, 4)
    exact["params"]["convs"][0] = {**params["params"]["convs"][0], "kernel": graph.Factors(u, v, kernel.shape)}
    np.testing.assert_allclose(jax.jit(lapply)(exact, x), apply_fn(params, x), rtol=1e-4, atol=1e-4)


def test_grouped_convolution_is_left_alone():
    rng = np.random.default_rng(7)
    p = {"depthwise": normal(rng, (3, 3, 1, 8)), "mix": normal(rng, (1, 1, 8, 8))}

    def f(p, x):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(x, p["depthwise"], (1, 1), "SAME", dimension_numbers=dn, feature_group_count=8)
        return jax.lax.conv_general_dilated(h, p["mix"], (1, 1), "SAME", dimension_numbers=dn)

    x = normal(rng, (2, 5, 5, 8))
    lapply, lparams = graph.lowrank(f, p, x, rank=2)
    assert not isinstance(lparams["depthwise"], graph.Factors) and isinstance(lparams["mix"], graph.Factors)
    assert lapply(lparams, x).shape == (2, 5, 5, 8)


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(32)(x)))
        return nn.Dense(4)(x)


def test_linen_model_trains_its_factors():
    model, x = LinenMLP(), normal(np.random.default_rng(5), (64, 16))
    apply_fn, variables = hamjax.linen_functional(model, model.init(jax.random.key(0), x))
    lapply, lparams = graph.lowrank(apply_fn, variables, x, rank=3)
    assert isinstance(lapply, hamjax.ApplyFn)
    y = jnp.asarray(np.random.default_rng(6).integers(0, 4, 64), jnp.int32)
    dataset = hamjax.data.from_arrays(x, y, name="toy")
    result = hamjax.fit(lapply, lparams, dataset, hamjax.TrainConfig(epochs=1, batch_size=16), progress=False)
    before, after = lparams["params"]["Dense_0"]["kernel"], result.params["params"]["Dense_0"]["kernel"]
    assert isinstance(after, graph.Factors) and not np.allclose(before.u, after.u)
    assert not np.allclose(
        lparams["batch_stats"]["BatchNorm_0"]["mean"], result.params["batch_stats"]["BatchNorm_0"]["mean"]
    )


def test_vmap_over_energies_equals_a_loop(mlp):
    apply_fn, params, x = mlp
    energies = jnp.array([0.2, 0.5, 0.9, 1.0])
    batch = jax.jit(jax.vmap(lambda e: graph.lowrank(apply_fn, params, x, rank=8, energy=e)[1]))(energies)
    lapply = graph.lowrank_apply(apply_fn)
    ys = jax.vmap(lambda p: lapply(p, x))(batch)
    for i, e in enumerate(energies.tolist()):
        _, one = graph.lowrank(apply_fn, params, x, rank=8, energy=e)
        np.testing.assert_allclose(ys[i], lapply(one, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(ys[0], ys[-1])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rank": 65}, r"lowrank: rank=65 is larger than min\(in, out\)=64 of \['w1'\]"),
        ({"rank": 0}, "lowrank: rank must be an integer >= 1, got 0"),
        ({"energy": 0.0}, r"lowrank: energy must be a finite number > 0 and <= 1, got 0.0"),
        ({"energy": 1.5}, r"lowrank: energy must be a finite number > 0 and <= 1, got 1.5"),
        ({"budget": 0.0}, r"lowrank: budget must be a finite number > 0 and <= 1, got 0.0"),
        ({"budget": 2.0}, r"lowrank: budget must be a finite number > 0 and <= 1, got 2.0"),
        ({"budget": 0.5, "rank": 3}, "lowrank: budget= chooses the ranks"),
        ({}, "lowrank: give one of rank=, energy= or budget="),
        ({"budget": 0.5, "scope": "global"}, r"lowrank: scope must be one of \('model', 'layer'\)"),
        ({"budget": 0.001}, "lowrank: budget=0.001 is below what the smallest ranks"),
    ],
)
def test_bad_input_names_the_argument(mlp, kw, match):
    apply_fn, params, x = mlp
    with pytest.raises(ValueError, match=match):
        graph.lowrank(apply_fn, params, x, **kw)


def test_svd_factors_bad_rank():
    with pytest.raises(ValueError, match=r"svd_factors: rank must be an integer in \[1, 3\], got 4"):
        graph.svd_factors(jnp.ones((5, 3)), 4)


@pytest.mark.slow
def test_factored_model_exports_to_onnx(mlp, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    apply_fn, params, x = mlp
    lapply, lparams = graph.lowrank(apply_fn, params, x, rank=8)
    result = hamjax.export.onnx(lapply, lparams, x[:1], tmp_path / "lowrank.onnx", check_data=x)
    products = [n for n in onnx.load(str(tmp_path / "lowrank.onnx")).graph.node if n.op_type in ("Gemm", "MatMul")]
    assert len(products) == 4  # two factors per layer
    assert all(check.max_relative_error <= 1e-5 for check in result.checks)
