"""The interpreter of hamjax.jaxpr.interpret: intercept on plain jax.numpy functions and NNX models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from reference_models import normal, plain_params_and_x, random_model

import hamjax
from hamjax import jaxpr


def _identity(i, site, a, w):
    return a, w


# ---------------------------------------------------------------- intercept


def test_identity_hook_is_bit_identical_on_plain_function():
    params, x = plain_params_and_x()

    def f(p, x):
        return jnp.tanh(x @ p["v"] + p["b"][None]) @ p["w"]

    g = jaxpr.intercept(f, _identity)
    np.testing.assert_array_equal(jax.jit(g)(params, x), jax.jit(f)(params, x))
    np.testing.assert_allclose(g(params, x), f(params, x), rtol=1e-6)
    grads = [jax.jit(jax.grad(lambda p, h=h: h(p, x).sum()))(params) for h in (f, g)]
    chex.assert_trees_all_equal(grads[1], grads[0])


def test_identity_hook_is_bit_identical_on_nnx_models():
    x = normal(np.random.default_rng(1), (4, 8, 8, 1))
    apply_fn, _, params = random_model("mlp", input_shape=(8, 8, 1))
    g = jaxpr.intercept(apply_fn, _identity)
    assert isinstance(g, hamjax.ApplyFn)
    np.testing.assert_array_equal(jax.jit(g)(params, x), jax.jit(apply_fn)(params, x))
    grads = [jax.jit(jax.grad(lambda p, h=h: h(p, x).sum()))(params) for h in (apply_fn, g)]
    chex.assert_trees_all_equal(grads[1], grads[0])
    # Attention (custom_jvp softmax, products of activations) evaluates unchanged too.
    apply_fn, _, params = random_model("vit", input_shape=(8, 8, 1), num_layers=1, hidden_size=16, num_heads=2)
    g = jaxpr.intercept(apply_fn, _identity)
    np.testing.assert_array_equal(jax.jit(g)(params, x), jax.jit(apply_fn)(params, x))


def test_identity_hook_keeps_cnn_train_mode_and_batch_stats():
    apply_fn, _, params = random_model("cnn", input_shape=(8, 8, 1))
    x = normal(np.random.default_rng(1), (4, 8, 8, 1))
    g = jaxpr.intercept(apply_fn, _identity)

    def run(h):
        return jax.jit(lambda p, x: h(p, x, train=True, rng=jax.random.key(2), mutable=True))(params, x)

    (y0, v0), (y1, v1) = run(apply_fn), run(g)
    np.testing.assert_array_equal(y1, y0)
    chex.assert_trees_all_equal(v1, v0)
    # Train mode really ran: the batch statistics moved.
    assert not np.allclose(v1["batch_stats"]["norms"][0]["mean"], params["batch_stats"]["norms"][0]["mean"])

    def grads(h):
        return jax.grad(lambda p: h(p, x, train=True, rng=jax.random.key(2), mutable=True)[0].sum())(params)

    # Separate programs, so that XLA cannot merge the two computations into one.
    chex.assert_trees_all_equal(jax.jit(lambda: grads(g))(), jax.jit(lambda: grads(apply_fn))())


def test_hook_replaces_operands():
    params, x = plain_params_and_x()

    def f(p, x):
        return x @ p["v"] + p["b"][None]

    zero_act = jaxpr.intercept(f, lambda i, s, a, w: (jnp.zeros_like(a), w))
    np.testing.assert_array_equal(zero_act(params, x), np.broadcast_to(params["b"], (2, 5)))
    double_w = jaxpr.intercept(f, lambda i, s, a, w: (a, 2 * w))
    np.testing.assert_allclose(double_w(params, x), x @ (2 * params["v"]) + params["b"][None], rtol=1e-6)

    # On an NNX model: zeroing the first site's activation equals feeding zeros.
    apply_fn, _, mparams = random_model("mlp", input_shape=(8, 8, 1))
    xm = normal(np.random.default_rng(1), (3, 8, 8, 1))
    first_zero = jax.jit(jaxpr.intercept(apply_fn, lambda i, s, a, w: (a * jnp.asarray(i != 0, a.dtype), w)))
    np.testing.assert_allclose(first_zero(mparams, xm), jax.jit(apply_fn)(mparams, 0 * xm), rtol=1e-6, atol=1e-6)


def test_hook_sees_sites_in_order_with_operands():
    params, x = plain_params_and_x()
    seen = []

    def hook(i, site, a, w):
        seen.append((i, site.name, a.shape, w.shape))
        return a, w

    jaxpr.intercept(lambda p, x: jnp.tanh(x @ p["v"]) @ p["w"], hook)(params, x)
    assert seen == [(0, "['v']", (2, 3), (3, 5)), (1, "['w']", (2, 5), (5, 3))]


def test_intercept_passes_keyword_arguments():
    params, x = plain_params_and_x()

    def f(p, x, *, scale, offset):
        return scale * (x @ p["v"]) + offset

    g = jaxpr.intercept(f, _identity)
    offset = jnp.arange(5.0)[None]
    np.testing.assert_allclose(g(params, x, scale=3.0, offset=offset), f(params, x, scale=3.0, offset=offset))
    sites = jaxpr.find_sites(f, params, x, scale=2.0, offset=offset)
    assert [s.name for s in sites] == ["['v']"]
