"""The batched affine warp and its matrices: identity, whole-pixel moves, quarter turns, zooms, bilinear halves."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.augment import rotation, translation, warp, zoom


def _images(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).random(shape), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_identity_returns_the_batch_exactly(dtype):
    x = _images((3, 7, 9, 2), dtype=dtype)
    y = warp(x, jnp.eye(3))
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))


def test_whole_pixel_translation_moves_content_and_fills_zeros():
    x = _images((2, 6, 5, 3))
    y = warp(x, translation(jnp.array([[2.0, -1.0], [0.0, 3.0]])))
    want = np.zeros(x.shape, np.float32)
    want[0, 2:, :-1] = x[0, :-2, 1:]
    want[1, :, 3:] = x[1, :, :-3]
    np.testing.assert_array_equal(np.asarray(y), want)


def test_half_pixel_translation_averages_neighbours():
    x = _images((1, 4, 4))
    y = warp(x, translation(jnp.array([[0.0, 0.5]])))
    np.testing.assert_allclose(np.asarray(y)[0, :, 1:], (np.asarray(x)[0, :, 1:] + np.asarray(x)[0, :, :-1]) / 2, 1e-6)


@pytest.mark.parametrize("side", [4, 5])
@pytest.mark.parametrize("turns", [1, -1, 2])
def test_quarter_turns_match_rot90(side, turns):
    x = _images((2, side, side, 3))
    y = warp(x, rotation(jnp.full((2,), turns * math.pi / 2), (side, side)))
    np.testing.assert_allclose(np.asarray(y), np.rot90(np.asarray(x), turns, axes=(1, 2)), atol=1e-5)


def test_zoom_magnifies_about_the_centre():
    x = jnp.zeros((1, 9, 9)).at[0, 3:6, 3:6].set(1.0)  # a 3x3 square at the centre
    y = np.asarray(warp(x, zoom(jnp.array([3.0]), (9, 9))))[0]
    # output pixel p samples 4 + (p - 4) / 3: rows and columns 1..7 land inside the square, 0 and 8 between it and zeros
    np.testing.assert_allclose(y[1:8, 1:8], np.ones((7, 7)), atol=1e-6)
    np.testing.assert_allclose(y[0, 1:8], np.full(7, 2 / 3), atol=1e-5)
    y = np.asarray(warp(x, zoom(jnp.array([1.0]), (9, 9))))
    np.testing.assert_array_equal(y, np.asarray(x))


def test_matrices_compose_by_multiplication():
    x = _images((1, 8, 8))
    move, turn = translation(jnp.array([[1.0, 2.0]])), rotation(jnp.array([math.pi / 2]), (8, 8))
    both = warp(x, move @ turn)  # move first, then turn
    one_by_one = warp(warp(x, move), turn)
    np.testing.assert_allclose(np.asarray(both), np.asarray(one_by_one), atol=1e-5)


def test_warp_is_jittable_and_vmappable():
    x = _images((2, 5, 5, 1))
    matrices = jnp.stack([translation(jnp.array([[1.0, 0.0], [0.0, 1.0]])), zoom(jnp.array([1.5, 0.5]), (5, 5))])
    batched = jax.vmap(lambda m: warp(x, m))(matrices)
    assert batched.shape == (2, 2, 5, 5, 1)
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(jax.jit(warp)(x, matrices[1])), atol=1e-6)


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match=r"warp: matrices must have shape \(2, 3, 3\)"):
        warp(jnp.zeros((2, 4, 4)), jnp.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="warp: x must be a floating array"):
        warp(jnp.zeros((4, 4)), jnp.eye(3))
