"""Pruning transforms: each applies its masks, keeps its state, vmaps over sparsity and checks its arguments."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from param_trees import param_tree, zero_counts

import hamjax
from hamjax import prune


@pytest.mark.parametrize(
    ("make", "masks_fn"),
    [
        (lambda: prune.magnitude_prune(0.5), lambda p: prune.magnitude_masks(p, 0.5)),
        (lambda: prune.global_magnitude_prune(0.5), lambda p: prune.magnitude_masks(p, 0.5, scope="global")),
        (lambda: prune.nm_prune(1, 4), lambda p: prune.nm_masks(p, 1, 4)),
        (lambda: prune.block_prune(0.5, block=(4, 4)), lambda p: prune.block_masks(p, 0.5)),
        (
            lambda: prune.nm_prune(1, 2, axis=-1, incompatible="skip"),
            lambda p: prune.nm_masks(p, 1, 2, axis=-1, incompatible="skip"),
        ),
        (
            lambda: prune.block_prune(0.5, block=(3, 5), score="mean"),
            lambda p: prune.block_masks(p, 0.5, block=(3, 5), score="mean"),
        ),
    ],
    ids=["magnitude", "global", "nm", "block", "nm-axis-skip", "block-ragged-mean"],
)
def test_transforms_apply_their_masks(make, masks_fn):
    params = param_tree()
    t = make()
    state = t.init(params)
    assert state.count == 0 and bool(jax.tree.reduce(lambda a, b: a & b.all(), state.masks, True))
    out, state = t.apply(params, state, unused=1)
    expected = prune.apply_masks(params, masks_fn(params))
    chex.assert_trees_all_equal(out, expected)
    np.testing.assert_array_equal(out["a"]["bias"], params["a"]["bias"])
    assert state.count == 1 and state.masks["a"]["bias"] is None
    again, state = t.apply(out, state)  # idempotent on already-pruned params
    assert zero_counts(again) == zero_counts(out) and state.count == 2


def test_random_prune_masks_are_fixed_at_init_and_seeded():
    params = param_tree()
    t = prune.random_prune(0.25, seed=3)
    state = t.init(params)
    out1, state = t.apply(params, state)
    out2, _ = t.apply(jax.tree.map(lambda x: x + 1.0, params), state)
    np.testing.assert_array_equal(out1["a"]["kernel"] == 0, out2["a"]["kernel"] == 0)
    assert zero_counts(out1)["['a']['kernel']"] == 200 and zero_counts(out1)["['b']['kernel']"] == 120
    other = prune.random_prune(0.25, seed=4)
    assert not np.array_equal(other.init(params).masks["a"]["kernel"], state.masks["a"]["kernel"])


def test_saliency_prune_reads_grads():
    params = param_tree()
    grads = jax.tree.map(jnp.cos, params)
    t = prune.saliency_prune(0.7)
    out, state = t.apply(params, t.init(params), grads=grads)
    masks = prune.saliency_masks(params, grads, 0.7)
    assert sum(zero_counts(out).values()) == math.floor(0.7 * (800 + 480))
    np.testing.assert_array_equal(state.masks["b"]["kernel"], masks["b"]["kernel"])
    with pytest.raises(ValueError, match="saliency_prune: apply needs grads="):
        t.apply(params, t.init(params))


def test_movement_scores_accumulate_and_prefer_moving_away_from_zero():
    params = {"w": jnp.array([[1.0, 1.0, -2.0, -2.0], [0.5, -0.5, 3.0, 0.1]])}
    grads = {"w": jnp.array([[-1.0, 1.0, 1.0, -1.0], [2.0, 2.0, 0.0, -0.3]])}
    t = prune.movement_prune(0.5)
    state = t.init(params)
    np.testing.assert_array_equal(state.scores["w"], np.zeros((2, 4)))
    _, state = t.apply(params, state, grads=grads)
    _, state = t.apply(params, state, grads=grads)
    expected = -2 * params["w"] * grads["w"]
    np.testing.assert_allclose(state.scores["w"], expected)
    # w g < 0: gradient descent grows |w|, so those weights are kept
    np.testing.assert_array_equal(state.masks["w"], expected > 0)
    assert state.count == 2
    with pytest.raises(ValueError, match="movement_prune: apply needs grads="):
        t.apply(params, state)
    with pytest.raises(ValueError, match=r"grads do not match params"):
        t.apply(params, state, grads={"v": grads["w"]})


def test_transforms_chain_and_vmap_over_sparsity():
    params = param_tree()

    def run(s):
        t = hamjax.chain(prune.magnitude_prune(s), hamjax.identity())
        out, _ = t.apply(params, t.init(params))
        return out

    out = jax.jit(jax.vmap(run))(jnp.array([0.0, 0.25, 0.5, 0.9]))
    for i, s in enumerate([0.0, 0.25, 0.5, 0.9]):
        assert int((out["a"]["kernel"][i] == 0).sum()) == math.floor(s * 800)
        assert int((out["b"]["kernel"][i] == 0).sum()) == math.floor(s * 480)


def test_transform_factories_validate_before_tracing():
    with pytest.raises(ValueError, match=r"magnitude_prune: sparsity must be a scalar in \[0, 1\), got 1.5"):
        prune.magnitude_prune(1.5)
    with pytest.raises(ValueError, match="scope must be one of"):
        prune.saliency_prune(0.5, scope="net")
    with pytest.raises(ValueError, match="n must be <= m"):
        prune.nm_prune(3, 2)
    with pytest.raises(ValueError, match="block must be two integers"):
        prune.block_prune(0.5, block=4)
    with pytest.raises(ValueError, match="block_prune: score must be one of"):
        prune.block_prune(0.5, score="max")
    with pytest.raises(ValueError, match="nm_prune: incompatible must be one of"):
        prune.nm_prune(2, 4, incompatible="pad")
    with pytest.raises(ValueError, match="nm_prune: axis must be an integer"):
        prune.nm_prune(2, 4, axis=1.5)
    with pytest.raises(ValueError, match="filter must be a callable"):
        prune.random_prune(0.5, filter=3)
    with pytest.raises(ValueError, match="movement_prune: sparsity"):
        prune.movement_prune(-0.5)
