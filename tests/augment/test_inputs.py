"""The shared checks of hamjax.augment: images, keys and the strength table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.augment import RANGES, Range, check_images, check_key, check_strength


def test_ranges_print_as_intervals():
    assert str(RANGES["rotate"]) == "[0, 180]"
    assert str(RANGES["scale"]) == "[0, 1)"
    assert str(RANGES["noise"]) == ">= 0"
    assert str(Range(1)) == ">= 1"


@pytest.mark.parametrize(
    "op, good, bad",
    [
        ("shift", [0, 2.5], [-1, float("nan"), "2"]),
        ("crop", [0, 4], [-1, 1.5, True]),
        ("rotate", [0, 180], [-0.1, 180.5, float("inf")]),
        ("scale", [0, 0.99], [1.0, -0.1]),
        ("cutout", [0, 8], [-2]),
        ("noise", [0, 0.3], [-0.01]),
        ("randaugment", [0, 1], [1.01, -0.5]),
    ],
)
def test_check_strength_accepts_the_range_and_refuses_the_rest(op, good, bad):
    for value in good:
        assert check_strength(op, "v", value, RANGES[op]) == value
    assert check_strength(op, "v", jnp.asarray(0.0), RANGES["noise"]) == 0.0
    for value in bad:
        with pytest.raises(ValueError, match=f"^{op}: v must be"):
            check_strength(op, "v", value, RANGES[op])


def test_traced_strengths_pass_unless_they_must_be_static():
    seen = []

    def f(v):
        seen.append(check_strength("rotate", "degrees", v, RANGES["rotate"]) is v)
        return v

    jax.jit(f)(500.0)  # traced: the caller's contract, not checked
    assert seen == [True]
    with pytest.raises(ValueError, match="crop: padding must be a concrete scalar"):
        jax.jit(lambda v: check_strength("crop", "padding", v, RANGES["crop"]))(2)
    with pytest.raises(ValueError, match="traced array of shape"):
        jax.jit(lambda v: check_strength("noise", "std", v, RANGES["noise"]))(jnp.zeros(3))


def test_check_images_adds_a_channel_and_refuses_other_shapes():
    assert check_images("f", "x", jnp.zeros((2, 5, 6))).shape == (2, 5, 6, 1)
    assert check_images("f", "x", jnp.zeros((2, 5, 6, 3), jnp.bfloat16)).dtype == jnp.bfloat16
    assert check_images("f", "x", np.zeros((1, 4, 4, 1), np.float32)).shape == (1, 4, 4, 1)
    for bad in (
        jnp.zeros((5, 6)),
        jnp.zeros((1, 2, 3, 4, 5)),
        jnp.zeros((2, 5, 6), jnp.int32),
        [[1.0]],
        jnp.zeros((0, 4, 4)),
    ):
        with pytest.raises(ValueError, match=r"^f: x must be a floating array of shape \(N, H, W, C\)"):
            check_images("f", "x", bad)


def test_check_key_accepts_one_key_of_either_kind():
    check_key("f", jax.random.key(0))
    check_key("f", jax.random.PRNGKey(0))
    for bad in (0, jax.random.split(jax.random.key(0), 2), jnp.zeros(2, jnp.float32)):
        with pytest.raises(ValueError, match="^f: key must be one PRNG key"):
            check_key("f", bad)
