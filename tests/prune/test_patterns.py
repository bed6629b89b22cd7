"""N:M and block masks of hamjax.prune: group counts, the N:M axis, skipped layers, ragged tiles, tile scores."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import prune

SPARSITIES = [0.0, 0.25, 0.5, 0.9]


def _tree():
    k = jax.random.split(jax.random.key(0), 4)
    return {
        "a": {"kernel": jax.random.normal(k[0], (20, 40)), "bias": jnp.linspace(-1, 1, 40)},
        "b": {"kernel": 3.0 * jax.random.normal(k[1], (40, 12)), "bias": jnp.ones(12)},
        "conv": {"kernel": jax.random.normal(k[2], (3, 3, 4, 8))},
        "embedding": jax.random.normal(k[3], (12, 4)),
    }


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_nm_groups_keep_exactly_n(n, m):
    k = jax.random.split(jax.random.key(0), 2)
    params = {"dense": jax.random.normal(k[0], (16, 24)), "conv": jax.random.normal(k[1], (3, 3, 8, 6))}
    masks = prune.nm_masks(params, n, m)
    dense = np.asarray(masks["dense"]).reshape(16 // m, m, 24)  # groups along the input axis 0
    assert (dense.sum(axis=1) == n).all()
    conv = np.asarray(masks["conv"]).reshape(3, 3, 8 // m, m, 6)  # groups along I of HWIO
    assert (conv.sum(axis=3) == n).all()
    w = np.abs(np.asarray(params["dense"])).reshape(16 // m, m, 24)
    kept_min = np.where(dense, w, np.inf).min(axis=1)
    pruned_max = np.where(dense, -np.inf, w).max(axis=1)
    assert (kept_min >= pruned_max).all()
    out = prune.apply_masks(params, masks)
    assert prune.sparsity_of(out) == pytest.approx(1 - n / m)


@pytest.mark.parametrize("axis", [-1, 1])
def test_nm_axis_on_a_dense_kernel(axis):
    w = jax.random.normal(jax.random.key(1), (6, 8))
    mask = np.asarray(prune.nm_masks({"w": w}, 2, 4, axis=axis)["w"])
    groups = mask.reshape(6, 2, 4)  # groups along the output axis now, rows of 4
    assert (groups.sum(axis=-1) == 2).all()
    a = np.abs(np.asarray(w)).reshape(6, 2, 4)
    assert (np.where(groups, a, np.inf).min(-1) >= np.where(groups, -np.inf, a).max(-1)).all()
    # the default axis (-2) would not give this pattern: 6 rows are not a multiple of 4
    with pytest.raises(ValueError, match="length 6"):
        prune.nm_masks({"w": w}, 2, 4)


@pytest.mark.parametrize("axis", [0, -4, 3])
def test_nm_axis_on_a_conv_kernel(axis):
    w = jax.random.normal(jax.random.key(2), (4, 4, 2, 4))
    mask = np.asarray(prune.nm_masks({"w": w}, 1, 4, axis=axis)["w"])
    assert (np.moveaxis(mask, axis, -1).sum(axis=-1) == 1).all()
    kept = np.where(mask, np.abs(np.asarray(w)), 0.0)
    np.testing.assert_array_equal(np.moveaxis(kept, axis, -1).max(-1), np.moveaxis(np.abs(w), axis, -1).max(-1))
    default = np.asarray(prune.nm_masks({"w": w}, 1, 2)["w"])
    assert (default.sum(axis=2) == 1).all()  # the I axis of HWIO


def test_nm_skip_leaves_incompatible_layers_dense_and_names_them():
    params = {
        "stem": {"kernel": jnp.ones((3, 3, 1, 8))},  # a 1-channel first convolution
        "patch": {"kernel": jnp.ones((49, 16))},  # a 49-wide patch embedding
        "dense": {"kernel": jax.random.normal(jax.random.key(3), (16, 4))},
    }
    with pytest.warns(UserWarning, match="left dense") as record:
        masks = prune.nm_masks(params, 2, 4, incompatible="skip")
    message = str(record[0].message)
    assert "['stem']['kernel'] (axis -2 has length 1)" in message
    assert "['patch']['kernel'] (axis -2 has length 49)" in message
    assert "['dense']" not in message
    assert masks["stem"]["kernel"] is None and masks["patch"]["kernel"] is None
    assert (np.asarray(masks["dense"]["kernel"]).reshape(4, 4, 4).sum(axis=1) == 2).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune.nm_masks({"dense": params["dense"]}, 2, 4, incompatible="skip")  # nothing skipped: no warning


def test_nm_raise_names_the_leaf_and_its_axis_length():
    params = {"stem": {"kernel": jnp.ones((3, 3, 1, 8))}, "dense": {"kernel": jnp.ones((16, 4))}}
    with pytest.raises(ValueError, match=r"m=4 must divide axis -2 of \['stem'\]\['kernel'\], which has length 1"):
        prune.nm_masks(params, 2, 4)
    with pytest.raises(ValueError, match=r"axis=2 is out of range for \['dense'\]\['kernel'\], shape \(16, 4\)"):
        prune.nm_masks(params, 2, 4, axis=2)


@pytest.mark.parametrize("block", [(4, 4), (2, 2), (4, 2)])
def test_block_masks_are_constant_within_blocks(block):
    params = _tree()
    masks = prune.block_masks(params, 0.5, block=block)
    bi, bo = block
    for name, leaf in (("a", masks["a"]["kernel"]), ("conv", masks["conv"]["kernel"])):
        m = np.asarray(leaf).reshape(-1, leaf.shape[-1])
        r, c = m.shape
        tiles = m.reshape(r // bi, bi, c // bo, bo)
        assert (tiles.all(axis=(1, 3)) == tiles.any(axis=(1, 3))).all(), name
        n_tiles = (r // bi) * (c // bo)
        assert (~tiles.all(axis=(1, 3))).sum() == math.floor(0.5 * n_tiles)
    # the pruned tiles have the smallest norms
    w = np.asarray(params["a"]["kernel"]).reshape(20 // bi, bi, 40 // bo, bo)
    norms = np.sqrt((w**2).sum(axis=(1, 3)))
    keep = np.asarray(masks["a"]["kernel"]).reshape(20 // bi, bi, 40 // bo, bo).all(axis=(1, 3))
    assert norms[~keep].max() <= norms[keep].min()


def _ragged_tiles(mask):
    """The 3 x 2 tiles of a 5 x 7 mask cut by (2, 4): row blocks 0:2, 2:4, 4:5; column blocks 0:4, 4:7."""
    rows, cols = [slice(0, 2), slice(2, 4), slice(4, 5)], [slice(0, 4), slice(4, 7)]
    return [[np.asarray(mask)[r, c] for c in cols] for r in rows]


@pytest.mark.parametrize("score", ["l2", "mean"])
@pytest.mark.parametrize("s", [0.25, 0.5, 0.9])
def test_block_masks_on_a_ragged_kernel(score, s):
    w = jax.random.normal(jax.random.key(4), (5, 7))
    mask = prune.block_masks({"w": w}, s, block=(2, 4), score=score)["w"]
    assert mask.shape == (5, 7)
    tiles = _ragged_tiles(mask)
    assert all(t.all() or not t.any() for row in tiles for t in row)  # edge tiles too
    pruned = [t.size for row in tiles for t in row if not t.any()]
    assert len(pruned) == math.floor(s * 6)
    assert int((~np.asarray(mask)).sum()) == sum(pruned)
    assert abs(sum(pruned) / 35 - s) <= 8 / 35  # element sparsity within one tile of the request
    a = np.abs(np.asarray(w))
    value = {"l2": lambda t: np.sqrt((t**2).sum()), "mean": np.mean}[score]
    scores = [value(a[r, c]) for r, c in _ragged_slices()]
    gone = [not t.any() for row in tiles for t in row]
    assert max(x for x, g in zip(scores, gone, strict=True) if g) <= min(
        x for x, g in zip(scores, gone, strict=True) if not g
    )


def _ragged_slices():
    return [(r, c) for r in (slice(0, 2), slice(2, 4), slice(4, 5)) for c in (slice(0, 4), slice(4, 7))]


def test_block_scores_l2_and_mean_differ_on_edge_tiles():
    # all |w| equal: L2 prefers pruning the small edge tiles, the mean sees ties and breaks them by position
    w = {"w": jnp.ones((5, 7))}
    l2 = _ragged_tiles(prune.block_masks(w, 0.2, block=(2, 4))["w"])
    mean = _ragged_tiles(prune.block_masks(w, 0.2, block=(2, 4), score="mean")["w"])
    assert not l2[2][1].any() and l2[0][0].all()  # the 1 x 3 corner tile has the smallest norm
    assert not mean[0][0].any() and mean[2][1].all()
    # a last row of larger weights: its 1 x 3 corner tile has the smallest L2 (4 sqrt(3) < 3 sqrt(6)) but the
    # largest mean (4 > 3)
    big_edge = jnp.full((5, 7), 3.0).at[4, :].set(4.0)
    l2 = _ragged_tiles(prune.block_masks({"w": big_edge}, 0.2, block=(2, 4))["w"])
    mean = _ragged_tiles(prune.block_masks({"w": big_edge}, 0.2, block=(2, 4), score="mean")["w"])
    assert not l2[2][1].any()
    assert mean[2][1].all() and not mean[0][0].any()


def test_block_masks_under_vmap():
    params = _tree()
    masks = jax.jit(jax.vmap(lambda s: prune.block_masks(params, s, block=(4, 2))))(jnp.array(SPARSITIES))
    for i, s in enumerate(SPARSITIES):
        assert int((~masks["a"]["kernel"][i]).sum()) == 8 * math.floor(s * 100)
    ragged = {"w": jax.random.normal(jax.random.key(5), (5, 7))}
    run = jax.jit(jax.vmap(lambda s: prune.block_masks(ragged, s, block=(2, 4), score="mean")))
    batched = run(jnp.array(SPARSITIES))["w"]
    for i, s in enumerate(SPARSITIES):
        np.testing.assert_array_equal(batched[i], prune.block_masks(ragged, s, block=(2, 4), score="mean")["w"])


def test_bad_arguments_raise():
    params = _tree()
    with pytest.raises(ValueError, match="n must be <= m"):
        prune.nm_masks(params, 5, 4)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        prune.nm_masks(params, 0, 4)
    with pytest.raises(ValueError, match="nm_masks: axis must be an integer"):
        prune.nm_masks(params, 2, 4, axis=1.5)
    with pytest.raises(ValueError, match="nm_masks: incompatible must be one of"):
        prune.nm_masks(params, 2, 4, incompatible="drop")
    with pytest.raises(ValueError, match="block must be two integers"):
        prune.block_masks(params, 0.5, block=(0, 4))
    with pytest.raises(ValueError, match="block_masks: score must be one of"):
        prune.block_masks(params, 0.5, score="l1")
