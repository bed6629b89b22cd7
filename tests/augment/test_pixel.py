"""Cutout and Gaussian noise: the zeroed square, the noise's spread, strength 0, jit and vmap, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.augment import box_masks, cutout, cutout_masks, noise

KEY = jax.random.key(0)


def _images(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).random(shape) + 0.5, dtype)  # no zeros


def _box(zeros: np.ndarray) -> tuple[int, int, int]:
    """Height and width of the bounding box of True, and the count of True."""
    rows, cols = np.nonzero(zeros)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1, len(rows)


@pytest.mark.parametrize("size", [5, 8])
def test_cutout_zeroes_a_square_of_the_given_side(size):
    x = _images((64, 24, 24, 2))
    y = np.asarray(cutout(KEY, x, size))
    assert y.shape == x.shape and y.dtype == np.float32
    whole, centres = 0, set()
    for image, out in zip(np.asarray(x), y, strict=True):
        zeros = out[..., 0] == 0
        assert np.array_equal(zeros, out[..., 1] == 0)  # every channel
        height, width, count = _box(zeros)
        assert count == height * width and height <= size and width <= size  # a solid box, cut at the border
        np.testing.assert_array_equal(out[~zeros], image[~zeros])
        whole += count == size * size
        centres.add(tuple(np.argwhere(zeros).mean(0).round(1)))
    assert whole > 32  # most squares fit inside
    assert len(centres) > 40  # each example drew its own place


def test_cutout_size_zero_is_the_identity_and_size_may_be_traced():
    x = _images((4, 10, 10))
    np.testing.assert_array_equal(np.asarray(cutout(KEY, x, 0)), np.asarray(x))
    batched = jax.vmap(lambda s: cutout(KEY, x, s))(jnp.array([0.0, 2.0, 4.0]))
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(x))
    zeros = (np.asarray(batched) == 0).reshape(3, 4, -1).sum(-1)
    assert np.all(zeros[1] <= 4) and np.all(zeros[2] <= 16) and zeros[2].sum() > zeros[1].sum()
    np.testing.assert_array_equal(np.asarray(batched[2]), np.asarray(cutout(KEY, x, 4.0)))


def test_box_masks_draw_rectangles_of_each_examples_sides():
    sides = jnp.array([[2.0, 6.0], [5.0, 1.0], [0.0, 3.0]])
    masks = np.asarray(box_masks(KEY, 3, (40, 40), sides))
    assert masks.shape == (3, 40, 40)
    assert _box(masks[0])[:2] <= (2, 6) and _box(masks[1])[:2] <= (5, 1)
    assert not masks[2].any()
    assert np.array_equal(
        np.asarray(cutout_masks(KEY, 3, (40, 40), 4)), np.asarray(box_masks(KEY, 3, (40, 40), jnp.full((3, 2), 4.0)))
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_noise_has_the_asked_spread_and_keeps_the_dtype(dtype):
    x = jnp.zeros((32, 16, 16, 1), dtype)
    y = noise(KEY, x, 0.5)
    assert y.dtype == dtype and y.shape == x.shape
    values = np.asarray(y, np.float32)
    assert abs(values.std() - 0.5) < 0.02 and abs(values.mean()) < 0.02
    assert not np.array_equal(values[0], values[1])
    np.testing.assert_array_equal(np.asarray(noise(KEY, x, 0.5), np.float32), values)
    assert not np.array_equal(np.asarray(noise(jax.random.key(1), x, 0.5), np.float32), values)
    np.testing.assert_array_equal(np.asarray(noise(KEY, x, 0.0), np.float32), np.zeros(x.shape))


@pytest.mark.parametrize("name", ["noise", "cutout"])
def test_jit_and_vmap_over_keys_and_strengths(name):
    x = _images((3, 6, 6, 1))

    def op(k, v):
        return noise(k, x, v) if name == "noise" else cutout(k, x, v * 10)

    keys = jax.random.split(KEY, 3)
    batched = jax.vmap(lambda k: op(k, 0.3))(keys)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(jax.jit(op)(keys[i], 0.3)), atol=1e-6)
    by_strength = jax.vmap(lambda v: op(KEY, v))(jnp.array([0.0, 0.3]))
    np.testing.assert_array_equal(np.asarray(by_strength[0]), np.asarray(x))
    np.testing.assert_allclose(np.asarray(by_strength[1]), np.asarray(op(KEY, 0.3)), atol=1e-6)


@pytest.mark.parametrize(
    "call, phrase",
    [
        (lambda: cutout(KEY, jnp.zeros((2, 4, 4)), -1), "cutout: size must be a finite number >= 0"),
        (lambda: noise(KEY, jnp.zeros((2, 4, 4)), -0.1), "noise: std must be a finite number >= 0"),
        (lambda: noise(KEY, jnp.zeros((2, 4, 4)), float("nan")), "noise: std must be a finite number >= 0"),
        (lambda: noise(KEY, jnp.zeros((4, 4)), 0.1), "noise: x must be a floating array"),
        (lambda: box_masks(KEY, 2, (4, 4), jnp.ones((3, 2))), r"box_masks: sides must have shape \(2, 2\)"),
    ],
)
def test_bad_input_is_refused_in_one_line(call, phrase):
    with pytest.raises(ValueError, match=phrase) as info:
        call()
    assert len(str(info.value).splitlines()) == 1
