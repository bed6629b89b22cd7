"""Bipartite soft matching: the most similar pairs merge, sizes weight the average, every token is found again."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.graph import Matching, bipartite_matching, merged_positions, weighted_merge
from tests.reference_models import normal

C = 8


@pytest.fixture(scope="module")
def tokens():
    return normal(np.random.default_rng(1), (4, 16, C))


def test_matching_merges_the_most_similar_pairs():
    a = np.eye(4, dtype=np.float32)
    # A = tokens 0, 2, 4, 6; B = 1, 3, 5, 7.
    metric = np.stack([a[0], a[2], a[1], a[3], a[2], a[1], a[3] + 0.1 * a[2], a[0] + 0.1 * a[3]])[None]
    m = bipartite_matching(jnp.asarray(metric), 2)
    # A1 = B2 and A2 = B0 exactly; A0 ~ B3 and A3 ~ B1 only closely.
    assert dict(zip(m.merged[0].tolist(), m.into[0].tolist(), strict=True)) == {1: 2, 2: 0}
    assert sorted(m.unmerged[0].tolist()) == [0, 3]
    with pytest.raises(ValueError, match="r must be in"):
        bipartite_matching(jnp.asarray(metric), 5)


def test_known_duplicates_are_found_in_every_batch_row(tokens):
    # Rows of distinct tokens; A token 2i copies B token p[i] (up to a scale: the similarity is cosine) for i < 3.
    rng = np.random.default_rng(5)
    x = np.asarray(tokens).copy()
    wanted = []
    for n in range(4):
        p = rng.permutation(8)[:3]
        for i in range(3):
            x[n, 2 * i] = 3.0 * x[n, 2 * p[i] + 1]
        wanted.append({i: int(p[i]) for i in range(3)})
    m = bipartite_matching(jnp.asarray(x), 3)
    assert m.merged.shape == m.into.shape == (4, 3) and m.unmerged.shape == (4, 5)
    assert m.merged.dtype == m.into.dtype == m.unmerged.dtype == jnp.int32
    for n in range(4):
        assert dict(zip(m.merged[n].tolist(), m.into[n].tolist(), strict=True)) == wanted[n]
        assert sorted(m.merged[n].tolist() + m.unmerged[n].tolist()) == list(range(8))


def test_r0_merges_nothing_and_odd_token_counts(tokens):
    m = bipartite_matching(tokens, 0)
    assert m.merged.shape == (4, 0) and sorted(m.unmerged[0].tolist()) == list(range(8))
    merged, size = weighted_merge(tokens, jnp.ones((4, 16, 1), jnp.float32), m)
    assert merged.shape == (4, 16, C)
    np.testing.assert_array_equal(np.asarray(size), 1.0)
    odd = tokens[:, :15]  # A = 8 even tokens, B = 7 odd ones
    m = bipartite_matching(odd, 7)
    assert m.unmerged.shape == (4, 1) and m.into.shape == (4, 7)
    assert int(m.into.max()) <= 6
    with pytest.raises(ValueError, match=r"r must be in \[0, 7\] for 15 tokens"):
        bipartite_matching(odd, 8)
    with pytest.raises(ValueError, match="r must be in"):
        bipartite_matching(odd, -1)


def test_weighted_merge_is_the_size_weighted_average_and_sizes_add():
    x = jnp.array([[[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0], [9.0, 90.0], [11.0, 110.0]]])
    size = jnp.array([[[1.0], [2.0], [3.0], [1.0], [2.0], [4.0]]])
    # A = tokens (0, 2, 4), B = (1, 3, 5): token 4 joins token 1, token 0 joins token 5; token 2 stays.
    m = Matching(jnp.array([[1]]), jnp.array([[2, 0]]), jnp.array([[0, 2]]))
    y, s = weighted_merge(x, size, m)
    assert y.shape == (1, 4, 2) and s.shape == (1, 4, 1)
    # layout [token 2, token 1 + token 4, token 3, token 5 + token 0]
    assert s[0, :, 0].tolist() == [3.0, 4.0, 1.0, 5.0]
    np.testing.assert_allclose(y[0, :, 0], [5.0, (2 * 3 + 2 * 9) / 4, 7.0, (4 * 11 + 1) / 5], rtol=1e-6)
    np.testing.assert_allclose(y[0, :, 1], 10 * y[0, :, 0], rtol=1e-6)


def test_weighted_merge_keeps_the_weighted_sum_and_positions_point_at_each_token(tokens):
    size = jnp.asarray(np.random.default_rng(2).integers(1, 4, size=(4, 16, 1)), jnp.float32)
    m = bipartite_matching(tokens, 5)
    merged, new_size = weighted_merge(tokens, size, m)
    assert merged.shape == (4, 11, C) and new_size.shape == (4, 11, 1)
    np.testing.assert_allclose((merged * new_size).sum(1), (tokens * size).sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_size.sum(1), size.sum(1))
    pos = np.asarray(merged_positions(m, 16))
    assert pos.shape == (4, 16) and pos.min() >= 0 and pos.max() == 10
    # Unmerged tokens are found unchanged at their position; every merged position holds the sizes it sums.
    back = np.take_along_axis(np.asarray(merged), pos[:, :, None], axis=1)
    moved = np.zeros((4, 16), bool)
    np.put_along_axis(moved, 2 * np.asarray(m.merged), True, axis=1)
    np.put_along_axis(moved, 2 * np.asarray(m.into) + 1, True, axis=1)
    np.testing.assert_allclose(back[~moved], np.asarray(tokens)[~moved], rtol=1e-6, atol=1e-7)
    totals = np.zeros((4, 11))
    np.add.at(totals, (np.arange(4)[:, None], pos), np.asarray(size)[:, :, 0])
    np.testing.assert_allclose(totals, np.asarray(new_size)[:, :, 0])


def test_merged_positions_example():
    m = Matching(jnp.array([[1, 2]]), jnp.array([[0]]), jnp.array([[1]]))
    # A = (0, 2, 4), B = (1, 3); token 0 joins token 3: layout [tok 2, tok 4, tok 1, tok 3 + tok 0].
    assert merged_positions(m, 5).tolist() == [[3, 2, 0, 3, 1]]


def test_merged_positions_send_each_token_to_its_merged_one(tokens):
    m = bipartite_matching(tokens, 6)
    pos = np.asarray(merged_positions(m, 16))
    assert pos.dtype == np.int32
    kept = m.unmerged.shape[1]
    for n in range(4):
        for rank, a in enumerate(m.unmerged[n].tolist()):
            assert pos[n, 2 * a] == rank
        for a, b in zip(m.merged[n].tolist(), m.into[n].tolist(), strict=True):
            assert pos[n, 2 * a] == pos[n, 2 * b + 1] == kept + b
        np.testing.assert_array_equal(pos[n, 1::2], kept + np.arange(8))


def test_static_shapes_under_jit(tokens):
    @jax.jit
    def merge(x):
        m = bipartite_matching(x, 4)
        y, s = weighted_merge(x, jnp.ones((*x.shape[:2], 1), x.dtype), m)
        return y, s, merged_positions(m, x.shape[1])

    y, s, pos = merge(tokens)
    assert y.shape == (4, 12, C) and s.shape == (4, 12, 1) and pos.shape == (4, 16)
    out = jax.eval_shape(merge, jax.ShapeDtypeStruct((7, 16, C), jnp.float32))
    assert [o.shape for o in out] == [(7, 12, C), (7, 12, 1), (7, 16)]
    m = bipartite_matching(tokens, 4)
    eager = weighted_merge(tokens, jnp.ones((4, 16, 1), jnp.float32), m)[0]
    np.testing.assert_allclose(y, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pos, merged_positions(m, 16))
