"""Site discovery of hamjax.jaxpr.sites on NNX, Linen and plain jax.numpy models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import normal, plain_params_and_x, random_model

import hamjax
from hamjax import jaxpr


def _identity(i, site, a, w):
    return a, w


def _kernels(params) -> list[str]:
    return [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(params)
        if getattr(p[-1], "key", None) == "kernel"
    ]


def _site_summary(sites):
    return [(s.name, s.leaf, s.weight_operand, s.channel_axes, s.leaf_channel_axes) for s in sites]


# ---------------------------------------------------------------- NNX reference models


@pytest.mark.parametrize(("name", "n_sites"), [("mlp", 3), ("cnn", 5), ("vit", 14), ("hamnet", 22)])
def test_find_sites_on_reference_models(name, n_sites):
    apply_fn, _, params = random_model(name, input_shape=(28, 28, 1))
    sites = jaxpr.find_sites(apply_fn, params, jnp.zeros((2, 28, 28, 1)))
    kernels = _kernels(params)
    assert len(sites) == len(kernels) == n_sites
    assert sorted(s.name for s in sites) == sorted(kernels)
    assert all(s.leaf == s.name for s in sites)
    leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    for s in sites:
        assert s.weight_shape == leaves[s.leaf].shape
        assert s.weight_operand == 1 and s.activation_shape[0] == 2
        if s.primitive == "conv_general_dilated":
            assert s.channel_axes == s.leaf_channel_axes == (3,)  # HWIO: output channels last
        else:
            assert s.primitive == "dot_general" and s.channel_axes == s.leaf_channel_axes == (1,)
    # The same function gives the same sites in the same order.
    assert jaxpr.find_sites(apply_fn, params, jnp.zeros((2, 28, 28, 1))) == sites


def test_attention_scores_are_not_sites():
    apply_fn, _, params = random_model("vit", input_shape=(28, 28, 1))
    sites = jaxpr.find_sites(apply_fn, params, jnp.zeros((2, 28, 28, 1)))
    names = [s.name for s in sites]
    assert all("#" not in n for n in names)  # no computed-weight site: Q K^T and A V stay float
    assert names[:5] == [
        "['params']['patch_embed']['kernel']",
        "['params']['blocks'][0]['attn']['query']['kernel']",
        "['params']['blocks'][0]['attn']['key']['kernel']",
        "['params']['blocks'][0]['attn']['value']['kernel']",
        "['params']['blocks'][0]['attn']['out']['kernel']",
    ]


# ---------------------------------------------------------------- Linen


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(x)


def _linen():
    model = _LinenNet()
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 6, 6, 1)), jnp.float32)
    # Random variables of the right shapes without running the (slow, eager) initializers.
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(2)
    variables = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), jnp.float32), shapes)
    return model, variables, x


def test_find_sites_on_linen_model():
    model, variables, x = _linen()
    expected = [
        ("['params']['Conv_0']['kernel']", (3,)),
        ("['params']['Dense_0']['kernel']", (1,)),
        ("['params']['Dense_1']['kernel']", (1,)),
    ]
    for apply_fn, params in [hamjax.linen_functional(model, variables), (model.apply, variables)]:
        sites = jaxpr.find_sites(apply_fn, params, x)
        assert [(s.name, s.leaf_channel_axes) for s in sites] == expected
        assert [s.primitive for s in sites] == ["conv_general_dilated", "dot_general", "dot_general"]
        out = jax.jit(jaxpr.intercept(apply_fn, _identity))(params, x)
        np.testing.assert_array_equal(out, jax.jit(apply_fn)(params, x))


# ---------------------------------------------------------------- plain jax.numpy


def test_transposed_weight_maps_channel_axes_to_the_leaf():
    params, x = plain_params_and_x()
    sites = jaxpr.find_sites(lambda p, x: x @ p["w"].T, params, x)
    assert _site_summary(sites) == [("['w']", "['w']", 1, (1,), (0,))]
    assert sites[0].activation_shape == (2, 3) and sites[0].weight_shape == (3, 5)
    sites = jaxpr.find_sites(lambda p, x: jnp.einsum("ni,oi->no", x, p["w"]), params, x)
    assert _site_summary(sites) == [("['w']", "['w']", 1, (0,), (0,))]
    sites = jaxpr.find_sites(lambda p, x: p["w"] @ x.T, params, x)
    assert _site_summary(sites) == [("['w']", "['w']", 0, (0,), (0,))]


def test_reshaped_weight_has_no_leaf_channel_axes():
    params, x = plain_params_and_x()
    sites = jaxpr.find_sites(lambda p, x: x @ p["w"].reshape(3, 5), params, x)
    assert _site_summary(sites) == [("['w']", "['w']", 1, (1,), None)]


def test_computed_weight_is_a_site_without_leaf():
    params, x = plain_params_and_x()
    mask = np.tril(np.ones((3, 5), np.float32))
    sites = jaxpr.find_sites(lambda p, x: jnp.tanh(x @ p["v"]) @ p["w"] @ (p["v"] * mask), params, x)
    assert _site_summary(sites) == [
        ("['v']", "['v']", 1, (1,), (1,)),
        ("['w']", "['w']", 1, (1,), (1,)),
        ("dot_general#2", None, 1, (1,), None),
    ]


def test_weight_used_twice_gets_a_numbered_name():
    params, x = plain_params_and_x()
    sites = jaxpr.find_sites(lambda p, x: x @ p["v"] @ p["w"] @ p["v"] + x @ p["v"], params, x)
    assert [s.name for s in sites] == ["['v']", "['w']", "['v']#1", "['v']#2"]
    assert [s.leaf for s in sites] == ["['v']", "['w']", "['v']", "['v']"]


def test_product_of_two_activations_is_not_a_site():
    params, x = plain_params_and_x()
    sites = jaxpr.find_sites(lambda p, x: (x @ x.T) @ x @ p["v"], params, x)
    assert [s.name for s in sites] == ["['v']"]
    with pytest.raises(ValueError, match="nothing to quantize"):
        jaxpr.find_sites(lambda p, x: (x @ x.T) + p["b"][:2][None], params, x)


def test_function_without_dot_or_conv_raises():
    params, x = plain_params_and_x()
    with pytest.raises(ValueError, match="dot_general or conv_general_dilated"):
        jaxpr.find_sites(lambda p, x: jnp.tanh(x) * p["b"][:3][None], params, x)


def test_sites_inside_jit_calls_are_found():
    params, x = plain_params_and_x()
    inner = jax.jit(lambda a, w: jnp.tanh(a @ w))
    sites = jaxpr.find_sites(lambda p, x: inner(x, p["v"]) @ p["w"], params, x)
    assert _site_summary(sites) == [("['v']", "['v']", 1, (1,), (1,)), ("['w']", "['w']", 1, (1,), (1,))]


def test_sites_inside_checkpoint_are_found():
    params, x = plain_params_and_x()
    inner = jax.checkpoint(lambda a, w: jnp.tanh(a @ w))
    sites = jaxpr.find_sites(lambda p, x: inner(x, p["v"]) @ p["w"], params, x)
    assert [s.name for s in sites] == ["['v']", "['w']"]


def test_conv_channel_axes_follow_the_kernel_layout():
    params = {"k": normal(np.random.default_rng(0), (3, 3, 2, 4))}
    x = jnp.ones((1, 6, 6, 2))

    def hwio(p, x):
        return jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def oihw(p, x):
        k = p["k"].transpose(3, 2, 0, 1)
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))

    assert _site_summary(jaxpr.find_sites(hwio, params, x)) == [("['k']", "['k']", 1, (3,), (3,))]
    assert _site_summary(jaxpr.find_sites(oihw, params, x)) == [("['k']", "['k']", 1, (0,), (3,))]
    np.testing.assert_array_equal(jax.jit(jaxpr.intercept(oihw, _identity))(params, x), jax.jit(oihw)(params, x))


def test_weight_flowing_into_scan_warns():
    params, x = plain_params_and_x()

    def f(p, x):
        def body(c, _):
            return jnp.tanh(c @ p["v"] @ p["w"]), None

        c, _ = jax.lax.scan(body, x, None, length=2)
        return c @ p["v"]

    with pytest.warns(UserWarning, match="scan"):
        sites = jaxpr.find_sites(f, params, x)
    assert [s.name for s in sites] == ["['v']"]  # only the op outside the scan


def test_weight_flowing_into_cond_warns():
    params, x = plain_params_and_x()

    def f(p, x):
        h = jax.lax.cond(jnp.sum(x) > 0, lambda w: x @ w, lambda w: -(x @ w), p["v"])
        return h @ p["w"]

    with pytest.warns(UserWarning, match="cond"):
        sites = jaxpr.find_sites(f, params, x)
    assert [s.name for s in sites] == ["['w']"]  # only the op outside the cond


def test_weight_channel_axes_drops_conflicting_leaves():
    params, x = plain_params_and_x()
    sites = jaxpr.find_sites(
        lambda p, x: jnp.tanh(x @ p["v"]) @ p["v"].T @ p["w"].reshape(3, 5) @ p["w"] @ p["v"], params, x
    )
    assert [(s.name, s.leaf_channel_axes) for s in sites] == [
        ("['v']", (1,)),
        ("['v']#1", (0,)),
        ("['w']", None),
        ("['w']#1", (1,)),
        ("['v']#2", (1,)),
    ]
    assert jaxpr.weight_channel_axes(sites) == {}
    # Uses that agree (["w"] twice, transposed both times) keep their leaf's axes.
    sites = jaxpr.find_sites(lambda p, x: x @ p["w"].T @ p["v"].T @ p["w"].T, params, x)
    assert [s.name for s in sites] == ["['w']", "['v']", "['w']#1"]
    assert jaxpr.weight_channel_axes(sites) == {"['w']": (0,), "['v']": (0,)}
