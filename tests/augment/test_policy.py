"""RandAugment: magnitude 0 is the identity, the magnitude is a vmappable leaf, ops are drawn per example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.augment import RANDAUGMENT_OPS, randaugment

KEY = jax.random.key(0)


def _images(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).random(shape), dtype)


@pytest.mark.parametrize(("shape", "dtype"), [((6, 12, 12, 1), jnp.float32), ((6, 12, 12), jnp.bfloat16)])
def test_shape_dtype_determinism_and_magnitude_zero(shape, dtype):
    x = _images(shape, dtype=dtype)
    y = randaugment(KEY, x, 0.7)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(randaugment(KEY, x, 0.7), np.float32), np.asarray(y, np.float32))
    assert not np.array_equal(np.asarray(randaugment(jax.random.key(1), x, 0.7), np.float32), np.asarray(y, np.float32))
    np.testing.assert_array_equal(np.asarray(randaugment(KEY, x, 0.0), np.float32), np.asarray(x, np.float32))


def test_vmap_over_a_population_of_magnitudes():
    x = _images((4, 10, 10, 1))
    magnitudes = jnp.array([0.1, 0.5, 0.9])
    population = jax.vmap(lambda m: randaugment(KEY, x, m))(magnitudes)
    assert population.shape == (3, 4, 10, 10, 1)
    for i, m in enumerate([0.1, 0.5, 0.9]):
        np.testing.assert_allclose(np.asarray(population[i]), np.asarray(randaugment(KEY, x, m)), atol=1e-5)


def test_a_larger_magnitude_changes_the_images_more():
    x = _images((64, 12, 12, 1))
    change = jax.vmap(lambda m: jnp.abs(randaugment(KEY, x, m) - x).mean())(jnp.array([0.1, 0.5, 0.9]))
    change = np.asarray(change)
    assert 0 < change[0] < change[1] < change[2]


def test_operations_are_drawn_uniformly_per_example():
    # with one op at full magnitude on constant images, only the identity leaves an image unchanged
    x = jnp.ones((600, 12, 12, 1))
    y = np.asarray(randaugment(KEY, x, 1.0, num_ops=1))
    unchanged = np.all(y == 1.0, axis=(1, 2, 3)).mean()
    assert abs(unchanged - 1 / len(RANDAUGMENT_OPS)) < 0.05
    # each example drew its own parameters: only the identities (1/6) and a few cutouts at one place repeat
    assert len(np.unique(y.reshape(600, -1), axis=0)) > 400
    y3 = np.asarray(randaugment(KEY, x, 1.0, num_ops=3))
    assert np.all(y3 == 1.0, axis=(1, 2, 3)).mean() < 0.05  # (1/6)^3 of them


def test_vmap_over_keys_matches_single_calls():
    x = _images((3, 8, 8, 1))
    keys = jax.random.split(KEY, 4)
    batched = jax.vmap(lambda k: randaugment(k, x, 0.6))(keys)
    for i in range(4):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(randaugment(keys[i], x, 0.6)), atol=1e-5)


@pytest.mark.parametrize(
    "call, phrase",
    [
        (
            lambda: randaugment(KEY, jnp.zeros((2, 4, 4)), 1.5),
            "randaugment: magnitude must be a finite number >= 0 and <= 1",
        ),
        (lambda: randaugment(KEY, jnp.zeros((2, 4, 4)), -0.1), "randaugment: magnitude must be"),
        (
            lambda: randaugment(KEY, jnp.zeros((2, 4, 4)), 0.5, num_ops=0),
            "randaugment: num_ops must be an integer >= 1",
        ),
        (lambda: randaugment(KEY, jnp.zeros((2, 4)), 0.5), "randaugment: x must be a floating array"),
        (
            lambda: jax.vmap(lambda m: randaugment(KEY, jnp.zeros((2, 4, 4)), m))(jnp.zeros((2, 2))),
            "randaugment: magnitude must be a concrete scalar in",
        ),
    ],
)
def test_bad_input_is_refused_in_one_line(call, phrase):
    with pytest.raises(ValueError, match=phrase) as info:
        call()
    assert len(str(info.value).splitlines()) == 1
