"""Soft targets, mixup and cutmix: rows sum to 1 and match the mixed pixels, per-example draws, jit/vmap, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hamjax.augment import cutmix, mixup, soft_targets

KEY = jax.random.key(0)
N, C = 32, 40


def _labelled(n=N, shape=(6, 6, 1), dtype=jnp.float32):
    """Each image constant, its value its label (all labels distinct), and one-hot targets."""
    labels = jnp.arange(n, dtype=jnp.int32)
    x = jnp.broadcast_to(labels.astype(dtype).reshape((n,) + (1,) * len(shape)), (n, *shape))
    return x, soft_targets(labels, C)


def test_soft_targets_are_optax_smoothed_one_hot_rows():
    y = jnp.array([0, 3, 1], jnp.int32)
    for smoothing in (0.0, 0.1, 0.5):
        got = soft_targets(y, 4, smoothing)
        want = optax.smooth_labels(jax.nn.one_hot(y, 4), smoothing)
        assert got.dtype == jnp.float32 and got.shape == (3, 4)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-7)
        np.testing.assert_allclose(np.asarray(got.sum(1)), np.ones(3), atol=1e-6)
    rows = soft_targets(y, 4, 0.0)
    np.testing.assert_allclose(np.asarray(soft_targets(rows, 4, 0.2)), np.asarray(soft_targets(y, 4, 0.2)), atol=1e-7)
    by_smoothing = jax.vmap(lambda s: soft_targets(y, 4, s))(jnp.array([0.0, 0.2]))
    np.testing.assert_allclose(np.asarray(by_smoothing[1]), np.asarray(soft_targets(y, 4, 0.2)), atol=1e-7)
    assert jax.jit(lambda y: soft_targets(y, 4, 0.1))(y).shape == (3, 4)


@pytest.mark.parametrize("mix", [mixup, cutmix])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_targets_sum_to_one_and_match_the_mixed_pixels(mix, dtype):
    x, targets = _labelled(shape=(12, 12, 1), dtype=dtype)
    mixed_x, mixed_t = mix(KEY, x, targets, 1.0)
    assert mixed_x.shape == x.shape and mixed_x.dtype == dtype
    assert mixed_t.shape == targets.shape and mixed_t.dtype == jnp.float32
    t = np.asarray(mixed_t)
    np.testing.assert_allclose(t.sum(1), np.ones(N), atol=1e-6)
    assert (t >= 0).all()
    # each image's mean value is the target-weighted mean of the labels it mixes
    mean = np.asarray(mixed_x, np.float32).reshape(N, -1).mean(1)
    np.testing.assert_allclose(mean, t @ np.arange(C), rtol=5e-3 if dtype == jnp.bfloat16 else 1e-5, atol=1e-4)
    # at most two sources per example, and the proportions differ from example to example
    assert ((t > 1e-6).sum(1) <= 2).all()
    assert len(np.unique(np.round(t.max(1), 4))) > N // 4


def test_cutmix_pastes_one_box_of_the_partner():
    x, targets = _labelled(shape=(16, 16))
    mixed_x, mixed_t = cutmix(KEY, x, targets, 1.0)
    mixed_x, t = np.asarray(mixed_x), np.asarray(mixed_t)
    for i in range(N):
        own = mixed_x[i] == i
        pasted = ~own
        if pasted.any():
            partner = int(np.unique(mixed_x[i][pasted])[0])
            assert np.all(mixed_x[i][pasted] == partner)
            rows, cols = np.nonzero(pasted)
            assert pasted.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one solid box
            np.testing.assert_allclose(t[i, partner], pasted.mean(), atol=1e-6)


def test_mixup_mixes_features_of_any_shape_and_is_deterministic():
    x = jnp.asarray(np.random.default_rng(0).random((N, 5)), jnp.float32)
    targets = soft_targets(jnp.arange(N) % 7, 7, 0.1)
    first = mixup(KEY, x, targets, 0.2)
    np.testing.assert_array_equal(np.asarray(mixup(KEY, x, targets, 0.2)[0]), np.asarray(first[0]))
    assert not np.array_equal(np.asarray(mixup(jax.random.key(1), x, targets, 0.2)[0]), np.asarray(first[0]))
    np.testing.assert_allclose(np.asarray(first[1].sum(1)), np.ones(N), atol=1e-6)


@pytest.mark.parametrize("mix", [mixup, cutmix])
def test_jit_and_vmap_over_keys_and_alphas(mix):
    x, targets = _labelled(n=8)
    keys = jax.random.split(KEY, 3)
    bx, bt = jax.vmap(lambda k: mix(k, x, targets, 0.5))(keys)
    jitted = jax.jit(lambda k: mix(k, x, targets, 0.5))
    for i in range(3):
        jx, jt = jitted(keys[i])
        np.testing.assert_allclose(np.asarray(bx[i]), np.asarray(jx), atol=1e-5)
        np.testing.assert_allclose(np.asarray(bt[i]), np.asarray(jt), atol=1e-6)
    ax, at = jax.vmap(lambda a: mix(KEY, x, targets, a))(jnp.array([0.2, 2.0]))
    wx, wt = mix(KEY, x, targets, 2.0)
    np.testing.assert_allclose(np.asarray(ax[1]), np.asarray(wx), atol=1e-4)
    np.testing.assert_allclose(np.asarray(at[1]), np.asarray(wt), atol=1e-5)


def test_mixed_targets_train_through_softmax_cross_entropy():
    x, targets = _labelled(n=8, shape=(4,))
    w = jnp.zeros((4, C))
    grads = jax.grad(lambda w: optax.softmax_cross_entropy(mixup(KEY, x, targets, 0.4)[0] @ w, targets).mean())(w)
    assert np.isfinite(np.asarray(grads)).all() and np.abs(np.asarray(grads)).sum() > 0


@pytest.mark.parametrize(
    "call, phrase",
    [
        (lambda: mixup(KEY, *_labelled(n=4), 0.0), "mixup: alpha must be a finite number > 0, got 0.0"),
        (lambda: mixup(KEY, *_labelled(n=4), -1), "mixup: alpha must be a finite number > 0"),
        (lambda: cutmix(KEY, *_labelled(n=4), float("nan")), "cutmix: alpha must be a finite number > 0"),
        (lambda: mixup(KEY, _labelled(n=4)[0], jnp.arange(4), 1.0), "mixup: targets must be floating probability rows"),
        (
            lambda: mixup(KEY, _labelled(n=4)[0], _labelled(n=5)[1], 1.0),
            "mixup: x and targets must have the same number",
        ),
        (lambda: mixup(KEY, jnp.arange(4), _labelled(n=4)[1], 1.0), "mixup: x must be a floating array"),
        (lambda: cutmix(KEY, jnp.zeros((4, 3)), _labelled(n=4)[1], 1.0), "cutmix: x must be a floating array of shape"),
        (lambda: cutmix(0, *_labelled(n=4), 1.0), "cutmix: key must be one PRNG key"),
        (
            lambda: soft_targets(jnp.array([0, 5]), 5),
            r"soft_targets: y must hold labels in \[0, 5\), got labels in \[0, 5\]",
        ),
        (lambda: soft_targets(jnp.array([0, 1]), 1), "soft_targets: num_classes must be an integer >= 2"),
        (lambda: soft_targets(jnp.array([0, 1]), 3, 1.0), r"soft_targets: smoothing must be a scalar in \[0, 1\)"),
        (
            lambda: soft_targets(jnp.ones((2, 4)), 3),
            "soft_targets: y must be integer labels or rows of 3 probabilities",
        ),
        (lambda: soft_targets(jnp.array([True]), 3), "soft_targets: y must be integer labels or floating"),
    ],
)
def test_bad_input_is_refused_in_one_line(call, phrase):
    with pytest.raises(ValueError, match=phrase) as info:
        call()
    assert len(str(info.value).splitlines()) == 1
