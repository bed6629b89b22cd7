"""Random shift, crop, rotation and zoom: shapes, keys, per-example draws, strength 0, jit and vmap, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.augment import (
    crop,
    rotate,
    rotate_matrices,
    scale,
    scale_matrices,
    shift,
    shift_matrices,
    warp,
)

KEY = jax.random.key(0)
OPS = {
    "shift": lambda k, x, v: shift(k, x, v),
    "crop": lambda k, x, v: crop(k, x, int(v)),
    "rotate": lambda k, x, v: rotate(k, x, v * 10),
    "scale": lambda k, x, v: scale(k, x, v / 4),
}


def _images(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).random(shape), dtype)


def _blob(n=16, side=21, at=(4, 10)):
    """``n`` copies of a 3x3 square centred off the image centre."""
    return jnp.zeros((n, side, side, 1)).at[:, at[0] - 1 : at[0] + 2, at[1] - 1 : at[1] + 2].set(1.0)


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize(("shape", "dtype"), [((4, 10, 12, 3), jnp.float32), ((4, 10, 12), jnp.bfloat16)])
def test_shape_dtype_key_and_per_example_draws(name, shape, dtype):
    op = OPS[name]
    x = jnp.broadcast_to(_images(shape[1:], dtype=dtype), shape)  # four copies of one image
    y = op(KEY, x, 2)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(op(KEY, x, 2), np.float32), np.asarray(y, np.float32))
    assert not np.array_equal(np.asarray(op(jax.random.key(1), x, 2), np.float32), np.asarray(y, np.float32))
    rows = np.asarray(y, np.float32).reshape(shape[0], -1)
    assert len({r.tobytes() for r in rows}) > 1  # each example drew its own parameters


@pytest.mark.parametrize("name", list(OPS))
def test_strength_zero_is_the_identity(name):
    x = _images((3, 9, 7, 2))
    np.testing.assert_array_equal(np.asarray(OPS[name](KEY, x, 0)), np.asarray(x))


def _whole_shift(image: np.ndarray, dr: int, dc: int) -> np.ndarray:
    h, w = image.shape[:2]
    padded = np.pad(image, ((h, h), (w, w), (0, 0)))
    return padded[h - dr : 2 * h - dr, w - dc : 2 * w - dc]


@pytest.mark.parametrize("op", [lambda k, x: shift(k, x, 2), lambda k, x: crop(k, x, 2)])
def test_whole_pixel_moves_copy_pixels_within_the_range(op):
    x = _images((32, 6, 7, 1))
    y = np.asarray(op(KEY, x))
    offsets = set()
    for image, moved in zip(np.asarray(x), y, strict=True):
        found = [
            (dr, dc) for dr in range(-2, 3) for dc in range(-2, 3) if np.array_equal(_whole_shift(image, dr, dc), moved)
        ]
        assert found, "not a whole-pixel move of at most 2"
        offsets.add(found[0])
    assert len(offsets) > 8  # of the 25, most are drawn


def test_crop_is_a_random_window_of_the_padded_image():
    x = _images((16, 5, 5, 2))
    y = np.asarray(crop(KEY, x, 3))
    for image, cropped in zip(np.asarray(x), y, strict=True):
        padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))
        windows = [padded[a : a + 5, b : b + 5] for a in range(7) for b in range(7)]
        assert any(np.array_equal(w, cropped) for w in windows)


def test_subpixel_shift_draws_real_offsets():
    matrices = np.asarray(shift_matrices(KEY, 64, 1.5, subpixel=True))
    offsets = -matrices[:, :2, 2]
    assert np.abs(offsets).max() <= 1.5 and np.abs(offsets).max() > 1.2
    assert not np.allclose(offsets, np.round(offsets))
    whole = -np.asarray(shift_matrices(KEY, 64, 1.5))[:, :2, 2]
    assert set(np.unique(whole)) == {-1.0, 0.0, 1.0}


def test_rotation_turns_a_blob_about_the_centre_within_the_range():
    x = _blob()
    centre = np.array([10.0, 10.0])

    def angles(images):
        images = np.asarray(images)[..., 0]
        rows, cols = np.mgrid[:21, :21]
        mass = images.sum(axis=(1, 2))
        com = np.stack([(images * rows).sum((1, 2)) / mass, (images * cols).sum((1, 2)) / mass], 1) - centre
        return np.degrees(np.arctan2(-com[:, 0], com[:, 1])), np.linalg.norm(com, axis=1), mass

    before, radius, mass = angles(x)
    after, new_radius, new_mass = angles(rotate(KEY, x, 90))
    turned = (after - before + 180) % 360 - 180
    assert np.all(np.abs(turned) <= 90.5)
    assert turned.max() > 30 and turned.min() < -30  # both ways
    np.testing.assert_allclose(new_radius, radius, atol=0.3)
    np.testing.assert_allclose(new_mass, mass, rtol=0.05)
    # the same draws as the matrices, warped
    n = x.shape[0]
    np.testing.assert_array_equal(
        np.asarray(rotate(KEY, x, 90)), np.asarray(warp(x, rotate_matrices(KEY, n, (21, 21), 90)))
    )


def test_a_half_turn_either_way_leaves_a_centred_disc_in_place():
    rows, cols = np.mgrid[:15, :15]
    disc = jnp.asarray(((rows - 7) ** 2 + (cols - 7) ** 2 <= 16).astype(np.float32))[None, :, :, None]
    y = rotate(KEY, jnp.broadcast_to(disc, (8, 15, 15, 1)), 180)
    assert np.abs(np.asarray(y) - np.asarray(disc)).mean() < 0.05


def test_scale_changes_a_centred_square_by_the_drawn_factor():
    x = jnp.zeros((32, 21, 21, 1)).at[:, 6:15, 6:15].set(1.0)  # 9x9 = 81 pixels
    mass = np.asarray(scale(KEY, x, 0.5)).sum(axis=(1, 2, 3))
    factors = 1 / np.asarray(scale_matrices(KEY, 32, (21, 21), 0.5))[:, 0, 0]
    assert factors.min() >= 0.5 and factors.max() <= 1.5 and factors.max() - factors.min() > 0.5
    np.testing.assert_allclose(mass, 81 * factors**2, rtol=0.15)


@pytest.mark.parametrize("name", list(OPS))
def test_jit_and_vmap_over_keys(name):
    op = OPS[name]
    x = _images((3, 8, 8, 1))
    keys = jax.random.split(KEY, 4)
    batched = jax.vmap(lambda k: op(k, x, 2))(keys)
    jitted = jax.jit(lambda k: op(k, x, 2))
    for i in range(4):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(jitted(keys[i])), atol=1e-6)
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(op(keys[i], x, 2)), atol=1e-6)


@pytest.mark.parametrize(
    "op, strengths",
    [(shift, [0.0, 1.0, 3.0]), (rotate, [0.0, 15.0, 90.0]), (scale, [0.0, 0.2, 0.5])],
)
def test_vmap_over_strengths(op, strengths):
    x = _images((3, 8, 8, 1))
    batched = jax.vmap(lambda v: op(KEY, x, v))(jnp.array(strengths))
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(x))
    for i, v in enumerate(strengths):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(op(KEY, x, v)), atol=1e-5)


@pytest.mark.parametrize(
    "call, phrase",
    [
        (lambda: shift(KEY, jnp.zeros((2, 4, 4)), -1), "shift: pixels must be a finite number >= 0"),
        (lambda: crop(KEY, jnp.zeros((2, 4, 4)), 1.5), "crop: padding must be an integer >= 0"),
        (lambda: rotate(KEY, jnp.zeros((2, 4, 4)), 181), "rotate: degrees must be a finite number >= 0 and <= 180"),
        (lambda: scale(KEY, jnp.zeros((2, 4, 4)), 1.0), "scale: amount must be a finite number >= 0 and < 1"),
        (lambda: rotate(KEY, jnp.zeros((2, 4, 4), jnp.int32), 10), "rotate: x must be a floating array"),
        (lambda: shift(jax.random.split(KEY, 2), jnp.zeros((2, 4, 4)), 1), "shift: key must be one PRNG key"),
        (lambda: jax.jit(lambda p: crop(KEY, jnp.zeros((2, 4, 4)), p))(2), "crop: padding must be a concrete scalar"),
        (lambda: shift_matrices(KEY, 0, 1), "shift_matrices: n must be an integer >= 1"),
    ],
)
def test_bad_input_is_refused_in_one_line(call, phrase):
    with pytest.raises(ValueError, match=phrase) as info:
        call()
    assert len(str(info.value).splitlines()) == 1
