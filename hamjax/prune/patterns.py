"""Pattern masks: N:M groups along a reduction axis and whole tiles of a weight matrix.

Both keep a fixed structure that sparse kernels can run: N:M keeps ``n`` of
every ``m`` consecutive weights along one axis (2:4 for sparse tensor
cores), block masks keep or prune whole ``block`` tiles. They take the
mask tree conventions of :mod:`hamjax.prune.masks` (``None`` at leaves not
pruned) and select leaves with the same ``filter``.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_choice, check_fraction, check_int
from hamjax._select import Filter, is_none, map_selected
from hamjax.prune.ranking import Masks, Params, rank_masks

INCOMPATIBLE = ("raise", "skip")
"""What :func:`nm_masks` does with a leaf whose N:M axis is not a multiple of ``m``."""

BLOCK_SCORES = ("l2", "mean")
"""How :func:`block_masks` scores a tile: its L2 norm or the mean ``|w|`` of its real elements."""


def check_nm(where: str, n, m) -> tuple[int, int]:
    """``(n, m)`` as ints, or raises unless ``1 <= n <= m`` (keep ``n`` of every ``m`` weights).

    Args:
      where: the caller's name, for errors.
      n: weights kept per group.
      m: group size.

    Returns:
      ``(n, m)``.

    Examples:
      >>> from hamjax.prune.patterns import check_nm
      >>> check_nm("nm_masks", 2, 4)
      (2, 4)
    """
    n, m = check_int(where, "n", n, minimum=1), check_int(where, "m", m, minimum=1)
    if n > m:
        raise ValueError(f"{where}: n must be <= m (keep n of every m weights), got n={n}, m={m}")
    return n, m


def nm_masks(
    params: Params, n: int, m: int, *, axis: int = -2, incompatible: str = "raise", filter: Filter | None = None
) -> Masks:
    """N:M masks: keep the ``n`` largest ``|w|`` of every ``m`` consecutive weights along ``axis``.

    The default ``axis=-2`` is the reduction (input) axis of hamjax's
    layouts: axis 0 of a dense kernel ``(in, out)``, the ``I`` axis of an
    ``HWIO`` conv kernel. Sparsity is ``1 - n/m`` exactly on every pruned
    leaf; 2:4 is the pattern sparse tensor cores run. Other layouts, such as
    NNX attention's ``(in, heads, head_dim)`` query kernel (axis -2 is
    ``heads``), should be left out with ``filter`` or given their ``axis``.

    Args:
      params: any pytree of arrays.
      n: weights kept per group, ``1 <= n <= m`` (static).
      m: group size (static).
      axis: the axis the groups run along, negative counting from the end;
        must exist in every selected leaf.
      incompatible: what to do with a selected leaf whose ``axis`` length is
        not a multiple of ``m`` (a 1-channel first convolution, a 49-wide
        patch embedding): ``"raise"`` a ``ValueError`` naming the leaf and
        the length, or ``"skip"`` it (left dense, ``None`` in the mask tree)
        with a ``UserWarning`` listing the skipped paths.
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      A mask tree.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> w = {"w": jnp.array([[1.0], [-3.0], [2.0], [0.5]])}
      >>> prune.nm_masks(w, 2, 4)["w"][:, 0].tolist()
      [False, True, True, False]
      >>> prune.nm_masks({"w": jnp.array([[1.0, -3.0, 2.0, 0.5]])}, 2, 4, axis=-1)["w"][0].tolist()
      [False, True, True, False]

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv
      2104.08378 (2021); Zhou et al., "Learning N:M Fine-grained Structured
      Sparse Neural Networks From Scratch", ICLR 2021.
    """
    n, m = check_nm("nm_masks", n, m)
    axis = check_int("nm_masks", "axis", axis)
    check_choice("nm_masks", "incompatible", incompatible, INCOMPATIBLE)
    skipped = []

    def one(path, w):
        name = jax.tree_util.keystr(path)
        if not -w.ndim <= axis < w.ndim:
            raise ValueError(f"nm_masks: axis={axis} is out of range for {name}, shape {w.shape} (ndim {w.ndim})")
        if w.shape[axis] % m:
            if incompatible == "skip":
                skipped.append(f"{name} (axis {axis} has length {w.shape[axis]})")
                return None
            raise ValueError(
                f"nm_masks: m={m} must divide axis {axis} of {name}, which has length {w.shape[axis]} "
                f"(shape {w.shape}); incompatible='skip' leaves such layers dense"
            )
        a = jnp.moveaxis(jnp.abs(w).astype(jnp.float32), axis, -1)
        groups = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
        rank = jnp.argsort(jnp.argsort(groups, axis=-1, stable=True), axis=-1)
        return jnp.moveaxis((rank >= m - n).reshape(a.shape), -1, axis)

    masks = map_selected("nm_masks", params, filter, one)
    if skipped:
        warnings.warn(f"nm_masks: left dense, m={m} does not divide their axis: {', '.join(skipped)}", stacklevel=2)
    return masks


def check_block(where: str, block) -> tuple[int, int]:
    """``block`` as ``(rows, cols)`` ints, or raises unless it is two integers >= 1.

    Args:
      where: the caller's name, for errors.
      block: the tile shape of block pruning.

    Returns:
      ``(rows, cols)``.

    Examples:
      >>> from hamjax.prune.patterns import check_block
      >>> check_block("block_masks", [4, 2])
      (4, 2)
    """
    try:
        bi, bo = block
        return check_int(where, "block[0]", bi, minimum=1), check_int(where, "block[1]", bo, minimum=1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: block must be two integers >= 1, got {block!r}") from err


def block_masks(params: Params, sparsity, *, block=(4, 4), score: str = "l2", filter: Filter | None = None) -> Masks:
    """Masks that prune the whole ``block`` tiles of smallest score in each layer.

    A kernel is viewed as a matrix ``(prod(shape[:-1]), shape[-1])`` (a conv
    ``HWIO`` kernel as ``(H*W*I, O)``) cut into tiles of ``block``; where
    ``block`` does not divide it, the last row and column of tiles are
    smaller (the matrix is padded, scored on its real elements only, and the
    mask cropped back). Of the ``B`` tiles, ``floor(s B)`` are pruned
    (``B = 10``, ``s = 0.25``: 2 tiles pruned, 8 kept), the ones with the
    smallest ``||W_b||_2`` (``score="l2"``, which favours pruning the
    smaller edge tiles) or smallest mean ``|w|`` (``score="mean"``, size-fair).

    Args:
      params: any pytree of arrays.
      sparsity: fraction of tiles in ``[0, 1)`` (possibly traced).
      block: ``(rows, cols)`` of a tile.
      score: ``"l2"`` or ``"mean"`` (static).
      filter: ``filter(path, leaf) -> bool``; :func:`default_filter` if ``None``.

    Returns:
      A mask tree, constant within each tile.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import prune
      >>> w = {"w": jnp.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0]])}
      >>> prune.block_masks(w, 0.5, block=(2, 2))["w"][0].tolist()
      [False, False, True, True]
      >>> prune.block_masks({"w": jnp.ones((2, 3))}, 0.5, block=(2, 2))["w"][0].tolist()
      [True, True, False]

    References:
      Gray et al., "GPU Kernels for Block-Sparse Weights", OpenAI 2017;
      Narang et al., "Block-Sparse Recurrent Neural Networks", arXiv 1711.02782.
    """
    bi, bo = check_block("block_masks", block)
    check_choice("block_masks", "score", score, BLOCK_SCORES)
    s = check_fraction("block_masks", "sparsity", sparsity)

    def padded(w):
        r, c = int(np.prod(w.shape[:-1])), w.shape[-1]
        pr, pc = math.ceil(r / bi) * bi - r, math.ceil(c / bo) * bo - c
        return jnp.pad(w.astype(jnp.float32).reshape(r, c), ((0, pr), (0, pc))), r, c

    def scores(path, w):
        x, r, c = padded(w)
        tiles = (x.shape[0] // bi, bi, x.shape[1] // bo, bo)
        if score == "l2":
            return jnp.sqrt(jnp.square(x).reshape(tiles).sum(axis=(1, 3)))
        real = np.pad(np.ones((r, c), np.float32), ((0, x.shape[0] - r), (0, x.shape[1] - c)))
        return jnp.abs(x).reshape(tiles).sum(axis=(1, 3)) / real.reshape(tiles).sum(axis=(1, 3))

    def expand(k, w):
        if k is None:
            return None
        r, c = int(np.prod(w.shape[:-1])), w.shape[-1]
        return jnp.repeat(jnp.repeat(k, bi, 0), bo, 1)[:r, :c].reshape(w.shape)

    keep = rank_masks(map_selected("block_masks", params, filter, scores), s, "layer")
    return jax.tree.map(expand, keep, params, is_leaf=is_none)
