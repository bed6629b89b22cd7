"""The column layout of a space and search coordinates, shared by Space and the evolution operators."""

import jax.numpy as jnp
import numpy as np

from hamjax.search.encoding import assemble, from_search, layout_of, stack_columns, to_search
from hamjax.search.space import Choice, Float, Int, Space

SPACE = Space({"lr": Float(1e-4, 1e-1, log=True), "n": Int(-3, 5), "p": Float(0.0, 0.5), "act": Choice(("a", "b"))})


def test_layout_groups_columns_by_kind_in_space_order():
    lay = layout_of(SPACE)
    assert lay.floats == ("lr", "p") and lay.discrete == ("n", "act")
    np.testing.assert_allclose(lay.low, [np.log(1e-4), 0.0])
    np.testing.assert_allclose(lay.high, [np.log(1e-1), 0.5])
    assert lay.log.tolist() == [True, False] and lay.choice.tolist() == [False, True]
    assert lay.int_low.tolist() == [-3, 0] and lay.int_high.tolist() == [5, 1]
    assert lay.int_low.dtype == np.int32 and lay.clip_low.dtype == np.float32
    assert layout_of(Space(SPACE.genes)) is lay  # cached per (equal) space


def test_search_coordinates_round_trip_and_clip():
    lay = layout_of(SPACE)
    x = jnp.array([[1e-3, 0.25], [1e-1, 0.0]], jnp.float32)
    s = to_search(lay, x)
    np.testing.assert_allclose(s[:, 0], np.log([1e-3, 1e-1]), rtol=1e-6)
    np.testing.assert_array_equal(s[:, 1], x[:, 1])
    np.testing.assert_allclose(from_search(lay, s), x, rtol=1e-6)
    clipped = from_search(lay, jnp.array([[0.0, 9.0], [-50.0, -1.0]]))
    assert clipped.dtype == jnp.float32
    np.testing.assert_allclose(clipped, [[1e-1, 0.5], [1e-4, 0.0]], rtol=1e-6)


def test_stack_columns_and_assemble_are_inverse():
    genomes = {
        "lr": jnp.array([1e-3, 1e-2]),
        "n": jnp.array([1, -2]),
        "p": jnp.array([0.1, 0.2]),
        "act": jnp.array([0, 1]),
    }
    lay = layout_of(SPACE)
    floats = stack_columns(genomes, lay.floats, jnp.float32)
    ints = stack_columns(genomes, lay.discrete, jnp.int32)
    assert floats.shape == (2, 2) and ints.dtype == jnp.int32
    back = assemble(SPACE.names, (lay.discrete, ints), (lay.floats, floats))
    assert list(back) == list(SPACE.names)
    for name in SPACE.names:
        np.testing.assert_allclose(back[name], genomes[name], rtol=1e-6)
