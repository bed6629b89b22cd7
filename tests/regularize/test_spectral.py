import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference_models import normal, random_model

from hamjax import regularize


def params():
    rng = np.random.default_rng(0)
    return {"dense": {"kernel": normal(rng, (6, 4)), "bias": normal(rng, (4,))}, "conv": normal(rng, (3, 3, 2, 5))}


def sigma_svd(w):
    return jnp.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)[0]


def test_norms_match_the_largest_singular_value():
    p = params()
    state = regularize.spectral_penalty(0.1).init(p)
    assert state.vectors["dense"]["bias"] is None
    assert state.vectors["conv"].shape == (5,)
    sigmas, state = regularize.spectral_norms(p, state, iterations=100)
    assert float(sigmas["dense"]["kernel"]) == pytest.approx(float(jnp.linalg.norm(p["dense"]["kernel"], 2)), rel=1e-4)
    assert float(sigmas["conv"]) == pytest.approx(float(jnp.linalg.norm(p["conv"].reshape(18, 5), 2)), rel=1e-4)
    assert sigmas["dense"]["bias"] is None


def test_penalty_gradient_matches_grad_of_svd_sigma():
    p = params()
    t = regularize.spectral_penalty(0.5, iterations=200)
    zeros = jax.tree.map(jnp.zeros_like, p)
    g, _ = t.update(zeros, t.init(p), p)
    for kernel in (p["dense"]["kernel"], p["conv"]):
        expected = 0.5 * jax.grad(sigma_svd)(kernel)
        got = g["dense"]["kernel"] if kernel.ndim == 2 else g["conv"]
        np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_array_equal(g["dense"]["bias"], 0.0)


def test_penalty_adds_to_the_incoming_gradient():
    p = params()
    t = regularize.spectral_penalty(0.0)
    ones = jax.tree.map(jnp.ones_like, p)
    g, _ = t.update(ones, t.init(p), p)
    np.testing.assert_array_equal(g["conv"], 1.0)
    with pytest.raises(ValueError, match="spectral_penalty: update needs params"):
        t.update(ones, t.init(p))


def test_jit_and_vmap_over_coefficient_and_scan():
    p = params()
    state = regularize.spectral_penalty(1.0).init(p)
    zeros = jax.tree.map(jnp.zeros_like, p)

    def update(c):
        return regularize.spectral_penalty(c, iterations=50).update(zeros, state, p)[0]["conv"]

    cs = jnp.array([0.0, 1.0, 3.0])
    batched = jax.jit(jax.vmap(update))(cs)
    for c, row in zip(cs.tolist(), batched, strict=True):
        np.testing.assert_allclose(row, update(c), atol=1e-5)
    # The state keeps its structure through a lax.scan of SGD steps, and the penalty lowers sigma.
    opt = optax.chain(regularize.spectral_penalty(1.0), optax.sgd(0.05))

    def step(carry, _):
        w, s = carry
        u, s = opt.update(jax.tree.map(jnp.zeros_like, w), s, w)
        return (optax.apply_updates(w, u), s), None

    (w, _), _ = jax.lax.scan(step, (p, opt.init(p)), length=20)
    assert float(sigma_svd(w["conv"])) < float(sigma_svd(p["conv"])) - 0.5
    np.testing.assert_array_equal(w["dense"]["bias"], p["dense"]["bias"])


def test_normalize_brings_sigma_to_one():
    p = params()
    t = regularize.spectral_normalize(iterations=1)
    state = t.init(p)
    apply = jax.jit(t.apply)
    for _ in range(60):  # one power step per call: the estimate settles over calls
        out, state = apply(p, state)
    assert float(sigma_svd(out["conv"])) == pytest.approx(1.0, abs=1e-3)
    assert float(sigma_svd(out["dense"]["kernel"])) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(out["dense"]["bias"], p["dense"]["bias"])
    # vmap over a batch of params (a population) normalizes each member.
    stacked = jax.tree.map(lambda a: jnp.stack([a, 3.0 * a]), p)
    states = jax.tree.map(lambda v: jnp.stack([v, v]), state)
    many, _ = jax.vmap(regularize.spectral_normalize(iterations=20).apply)(stacked, states)
    np.testing.assert_allclose(jax.vmap(sigma_svd)(many["conv"]), [1.0, 1.0], atol=1e-3)


def test_bf16_kernels_and_nnx_variables():
    p = {"w": jnp.asarray(params()["dense"]["kernel"], jnp.bfloat16)}
    t = regularize.spectral_normalize(iterations=30)
    out, _ = t.apply(p, t.init(p))
    assert out["w"].dtype == jnp.bfloat16
    _, _, variables = random_model("cnn", input_shape=(8, 8, 1), channels=(4, 8), dense=(16,))
    trainable = variables["params"]
    opt = regularize.spectral_penalty(0.1)
    g, state = opt.update(jax.tree.map(jnp.zeros_like, trainable), opt.init(trainable), trainable)
    assert state.vectors["convs"][0]["kernel"].shape == (4,)
    assert float(jnp.abs(g["convs"][1]["kernel"]).sum()) > 0
    np.testing.assert_array_equal(g["norms"][0]["scale"], 0.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="spectral_penalty: coefficient must be a finite number >= 0"):
        regularize.spectral_penalty(-0.1)
    with pytest.raises(ValueError, match="spectral_normalize: iterations must be an integer >= 1"):
        regularize.spectral_normalize(iterations=0)
    with pytest.raises(ValueError, match="spectral_norms: state must be a SpectralState"):
        regularize.spectral_norms(params(), {"vectors": None})
