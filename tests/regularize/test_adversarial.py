import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference_models import plain_mlp, random_model

import hamjax
from hamjax import regularize
from hamjax._losses import cross_entropy


@pytest.fixture(scope="module")
def trained(digits):
    """The plain jnp MLP (64-64-10) trained on the digits to about 95% test accuracy."""
    apply_fn, params = plain_mlp()
    x, y = jnp.asarray(digits.train.x), jnp.asarray(digits.train.y)
    opt = optax.adam(3e-3)

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(lambda p: cross_entropy(apply_fn(p, x), y))(p)
            u, s = hamjax._base.optax_update(opt, g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (params, opt.init(params)), length=300)[0][0]

    return apply_fn, train(params), digits


def loss(apply_fn, params, x, y):
    return float(cross_entropy(apply_fn(params, x), y))


def test_fgsm_raises_loss_within_epsilon_and_clip(trained):
    apply_fn, params, ds = trained
    x, y = jnp.asarray(ds.test.x[:128]), jnp.asarray(ds.test.y[:128])
    adv = regularize.fgsm(apply_fn, params, x, y, epsilon=0.1)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(jnp.abs(adv - x).max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert loss(apply_fn, params, adv, y) > loss(apply_fn, params, x, y) + 0.1
    unclipped = regularize.fgsm(apply_fn, params, x, y, epsilon=0.1, clip=None)
    assert float(unclipped.min()) < 0.0 or float(unclipped.max()) > 1.0
    np.testing.assert_array_equal(regularize.fgsm(apply_fn, params, x, y, epsilon=0.0), x)


def test_pgd_beats_fgsm_and_stays_in_the_ball(trained):
    apply_fn, params, ds = trained
    x, y = jnp.asarray(ds.test.x[:128]), jnp.asarray(ds.test.y[:128])
    fgsm = regularize.fgsm(apply_fn, params, x, y, epsilon=0.1)
    pgd = regularize.pgd(apply_fn, params, x, y, epsilon=0.1, steps=10)
    started = regularize.pgd(apply_fn, params, x, y, epsilon=0.1, steps=10, key=jax.random.key(0))
    assert loss(apply_fn, params, pgd, y) >= loss(apply_fn, params, fgsm, y)
    for adv in (pgd, started):
        assert float(jnp.abs(adv - x).max()) <= 0.1 + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not np.array_equal(started, pgd)


def test_no_gradient_reaches_the_params(trained):
    apply_fn, params, ds = trained
    x, y = jnp.asarray(ds.test.x[:16]), jnp.asarray(ds.test.y[:16])
    grads = jax.grad(lambda p: regularize.pgd(apply_fn, p, x, y, epsilon=0.1, steps=2).sum())(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_robust_accuracy_drops_with_epsilon(trained):
    apply_fn, params, ds = trained
    accs = [regularize.robust_accuracy(apply_fn, params, ds.test, epsilon=e, steps=5) for e in (0.0, 0.05, 0.2)]
    assert accs[0] > 0.9
    assert accs[0] > accs[1] > accs[2]
    assert accs[2] < 0.3
    pair = regularize.robust_accuracy(apply_fn, params, (ds.test.x, ds.test.y), epsilon=0.05, steps=5)
    assert pair == accs[1]


def test_jit_and_vmap_over_epsilon(trained):
    apply_fn, params, ds = trained
    x, y = jnp.asarray(ds.test.x[:32]), jnp.asarray(ds.test.y[:32])
    eps = jnp.array([0.0, 0.05, 0.1])
    batched = jax.jit(jax.vmap(lambda e: regularize.pgd(apply_fn, params, x, y, epsilon=e, steps=3)))(eps)
    for e, row in zip(eps.tolist(), batched, strict=True):
        np.testing.assert_allclose(row, regularize.pgd(apply_fn, params, x, y, epsilon=e, steps=3), atol=1e-6)
    fgsm = jax.vmap(lambda e: regularize.fgsm(apply_fn, params, x, y, epsilon=e))(eps)
    np.testing.assert_array_equal(fgsm[0], x)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        return nn.Dense(10)(x)


@pytest.mark.parametrize("kind", ["nnx", "linen"])
def test_flax_models(kind, digits):
    x, y = jnp.asarray(digits.test.x[:64]), jnp.asarray(digits.test.y[:64])
    if kind == "nnx":
        apply_fn, _, variables = random_model("mlp", input_shape=(8, 8, 1))
    else:
        model = LinenNet()
        apply_fn, variables = hamjax.linen_functional(model, model.init(jax.random.key(0), x))
    clean = float(cross_entropy(apply_fn(variables, x), y))
    adv = regularize.pgd(apply_fn, variables, x, y, epsilon=0.1, steps=3, key=jax.random.key(1))
    assert float(cross_entropy(apply_fn(variables, adv), y)) > clean
    assert float(jnp.abs(adv - x).max()) <= 0.1 + 1e-6
    acc = regularize.robust_accuracy(apply_fn, variables, digits.test, epsilon=0.0, steps=1, batch_size=100)
    assert acc == pytest.approx(float(hamjax.train.evaluate(apply_fn, variables, digits.test)["accuracy"]))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda f, p, x, y: regularize.fgsm(f, p, x, y, epsilon=-0.1), "fgsm: epsilon must be a finite number >= 0"),
        (lambda f, p, x, y: regularize.pgd(f, p, x, y, epsilon=0.1, steps=0), "pgd: steps must be an integer >= 1"),
        (
            lambda f, p, x, y: regularize.pgd(f, p, x, y, epsilon=0.1, steps=2, clip=(1.0, 0.0)),
            r"pgd: clip must be a pair \(lo, hi\) with lo <= hi",
        ),
        (
            lambda f, p, x, y: regularize.robust_accuracy(f, p, x, epsilon=0.1),
            "robust_accuracy: split must have .x and .y",
        ),
    ],
)
def test_bad_arguments(call, match):
    apply_fn, params = plain_mlp()
    with pytest.raises(ValueError, match=match):
        call(apply_fn, params, jnp.zeros((2, 64)), jnp.zeros(2, jnp.int32))
