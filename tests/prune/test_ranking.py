"""Ranking scores into masks: exact counts per layer or globally, ties by position, traced sparsity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.prune.ranking import keep_all, keep_top, random_scores, rank_masks


def _scores():
    return {
        "a": jax.random.normal(jax.random.key(0), (6, 5)),
        "b": 10.0 + jax.random.normal(jax.random.key(1), (4, 3)),
        "bias": None,
    }


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.99])
def test_layer_scope_prunes_exactly_floor_s_n_lowest_scores_per_leaf(s):
    scores = _scores()
    masks = rank_masks(scores, s, "layer")
    assert masks["bias"] is None
    for name in ("a", "b"):
        score, keep = np.asarray(scores[name]), np.asarray(masks[name])
        assert keep.dtype == bool and keep.shape == score.shape
        assert int((~keep).sum()) == math.floor(s * score.size)
        if 0 < (~keep).sum() < keep.size:
            assert score[~keep].max() <= score[keep].min()


def test_global_scope_ranks_all_leaves_together():
    masks = rank_masks(_scores(), 0.5, "global")
    # the 21 lowest of 42 scores all sit in "a" (the scores of "b" are about 10)
    assert int((~masks["a"]).sum()) == 21 and bool(masks["b"].all())


def test_ties_prune_the_lower_index_first():
    masks = rank_masks({"w": jnp.zeros(10)}, 0.3, "layer")
    np.testing.assert_array_equal(masks["w"], np.arange(10) >= 3)


def test_traced_sparsity_gives_exact_counts_under_vmap():
    scores = _scores()
    masks = jax.jit(jax.vmap(lambda s: rank_masks(scores, s, "layer")))(jnp.array([0.0, 0.5, 0.9]))
    assert [int((~masks["a"][i]).sum()) for i in range(3)] == [0, 15, 27]


def test_random_scores_and_keep_all_cover_the_selected_leaves():
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    a, b = random_scores("t", params, 0, None), random_scores("t", params, jax.random.key(0), None)
    assert a["b"] is None and a["w"].shape == (4, 3)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert float(a["w"].min()) >= 0.0 and float(a["w"].max()) < 1.0
    assert not np.array_equal(a["w"], random_scores("t", params, 1, None)["w"])
    dense = keep_all("t", params, None)
    assert dense["b"] is None and dense["w"].dtype == jnp.bool_ and bool(dense["w"].all())
    with pytest.raises(ValueError, match="t: filter selects no leaf"):
        keep_all("t", params, lambda p, x: False)


def test_keep_top_keeps_at_least_min_kept():
    scores = jnp.array([0.5, 0.1, 0.9, 0.3])
    np.testing.assert_array_equal(keep_top(scores, 0.5), [True, False, True, False])
    np.testing.assert_array_equal(keep_top(scores, 1.0), [False, False, False, False])
    np.testing.assert_array_equal(keep_top(scores, 1.0, min_kept=1), [False, False, True, False])
    kept = jax.vmap(lambda s: keep_top(scores, s, min_kept=1).sum())(jnp.array([0.0, 0.25, 0.75, 0.99]))
    np.testing.assert_array_equal(kept, [4, 3, 1, 1])
