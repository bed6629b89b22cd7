"""Layer sensitivity: the accuracy a model loses when one weight layer alone is quantized or pruned.

:func:`layer_sensitivity` scores every (layer, level) pair in one
vmapped, jitted call: member ``m`` of the population is the model with
layer ``l(m)`` replaced by its fake-quantized (:func:`hamjax.quant.fake_quant`,
per output channel) or magnitude-pruned (:func:`hamjax.prune.magnitude_masks`)
version at level ``k(m)``; the levels are array leaves, so one compiled
program covers them all. :func:`layer_ablation` is the reference it is
checked against: a Python loop that builds each modified model by the
storage path (:func:`hamjax.quant.quantize_params` to integer codes and
:func:`hamjax.quant.dequantize_tree` back) or, for pruning, zeroes the
smallest weights in numpy, and measures it on its own.

The drops feed the autotuner's recipe space (which layers to skip when
quantizing, how far to prune) and its explanation of each choice.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax import prune, quant
from hamjax._checks import check_choice, check_fraction, check_int
from hamjax.jaxpr import find_sites, weight_channel_axes, weight_filter

METHODS = ("quantize", "prune")
"""What is done to one layer: fake-quantize its weight to ``bits``, or magnitude-prune it to a sparsity."""

DEFAULT_LEVELS = {"quantize": (8, 4, 2), "prune": (0.5, 0.75, 0.9)}
"""The levels used when none are given: bit widths, or sparsities."""


class Sensitivity(NamedTuple):
    """Accuracy drops per layer and level.

    Attributes:
      names: the weight leaves scored (``jax.tree_util.keystr`` paths), in params order.
      levels: the bit widths or sparsities, as given.
      drops: ``(len(names), len(levels))`` float64, accuracy lost in points
        (percent of examples; negative when the change helped).
      ranking: ``names``, most sensitive first (largest mean drop over the
        levels; equal means keep params order).
      baseline: the unmodified model's accuracy in percent.
    """

    names: tuple[str, ...]
    levels: tuple[float, ...]
    drops: np.ndarray
    ranking: tuple[str, ...]
    baseline: float


def _check(where: str, method, levels, x, y) -> tuple:
    check_choice(where, "method", method, METHODS)
    levels = DEFAULT_LEVELS[method] if levels is None else levels
    if isinstance(levels, str | bytes) or not hasattr(levels, "__len__") or len(levels) == 0:
        raise ValueError(f"{where}: levels must be a non-empty sequence of levels, got {levels!r}")
    for v in levels:
        if method == "quantize":
            check_int(where, "levels", v, minimum=quant.MIN_BITS, maximum=quant.MAX_BITS)
        else:
            check_fraction(where, "levels", v)
    if np.ndim(x) < 1 or np.ndim(y) != 1 or len(x) != len(y):
        raise ValueError(
            f"{where}: y must be a vector with one label per row of x ({np.shape(x)[:1]}), got shape {np.shape(y)}"
        )
    if len(y) == 0:
        raise ValueError(f"{where}: x must hold at least one example, got shape {np.shape(x)}")
    return tuple(levels)


def _layers(where: str, apply_fn, params, x, filter) -> tuple[list, list[int], dict]:
    """Flattened leaves, the indices of the scored ones, and their output-channel axes by name."""
    if filter is None:
        filter = weight_filter(apply_fn, params, x)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    chosen = [i for i, (p, a) in enumerate(leaves) if filter(p, a) and jnp.issubdtype(jnp.result_type(a), jnp.floating)]
    if not chosen:
        raise ValueError(f"{where}: filter selects no floating leaf of params; expected at least one")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), params)
    axes = weight_channel_axes(find_sites(apply_fn, abstract, jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))))
    return leaves, chosen, axes


def _ranking(names, drops: np.ndarray) -> tuple[str, ...]:
    mean = drops.mean(axis=1)
    # Rounded so that float noise between equal drops does not reorder; then params order.
    order = sorted(range(len(names)), key=lambda i: (-round(float(mean[i]), 9), i))
    return tuple(names[i] for i in order)


def layer_sensitivity(apply_fn, params, x, y, *, method: str = "quantize", levels=None, filter=None) -> Sensitivity:
    """Accuracy drop when each weight layer alone is quantized or pruned, for every level, in one vmapped call.

    Each scored leaf ``w`` is modified at every level first (quantize:
    ``fake_quant(w, bits)`` symmetric per output channel, the axes from
    :func:`hamjax.jaxpr.weight_channel_axes`, else the last; prune: the
    ``floor(s n)`` smallest ``|w|`` set to zero). Then one jitted
    ``jax.vmap`` over ``len(names) * len(levels)`` members evaluates the
    model on ``x`` with member ``(l, k)``'s leaf ``l`` replaced by its level
    ``k`` version. Memory grows with the members times the scored leaves
    and ``x``: pass a validation-sized batch.

    Args:
      apply_fn: any apply function of the contract returning logits ``(N, classes)``.
      params: its params (trained).
      x: inputs ``(N, ...)``.
      y: integer labels ``(N,)``.
      method: one of :data:`METHODS`.
      levels: bit widths (integers in [2, 16]) for ``"quantize"``,
        sparsities in ``[0, 1)`` for ``"prune"``; ``None`` takes
        :data:`DEFAULT_LEVELS`.
      filter: ``filter(path, leaf) -> bool`` choosing the layers; ``None``
        takes :func:`hamjax.jaxpr.weight_filter` (the dense and conv weights).

    Returns:
      A :class:`Sensitivity`.

    Raises:
      ValueError: an unknown ``method``, empty or out-of-range ``levels``,
        ``x`` and ``y`` of different lengths (all before tracing), or a
        filter that selects nothing.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import autotune
      >>> params = {"w1": jnp.array([[1.0, -0.1], [0.2, 1.0]]), "w2": jnp.array([[1.0, 0.3], [0.1, 1.0]])}
      >>> f = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]]), jnp.array([0, 1, 0])
      >>> s = autotune.layer_sensitivity(f, params, x, y, method="prune", levels=(0.5,))
      >>> s.names, s.drops.tolist(), s.baseline
      (("['w1']", "['w2']"), [[0.0], [0.0]], 100.0)
    """
    where = "layer_sensitivity"
    levels = _check(where, method, levels, x, y)
    leaves, chosen, axes = _layers(where, apply_fn, params, x, filter)
    treedef = jax.tree.structure(params)
    names = tuple(jax.tree_util.keystr(leaves[i][0]) for i in chosen)
    arrays = [a for _, a in leaves]
    level_values = jnp.asarray(levels, jnp.float32)

    def variants(name, w):
        if method == "quantize":
            ax = axes.get(name, (-1,))
            return jax.vmap(lambda b: quant.fake_quant(w, bits=b, channel_axes=ax))(level_values)

        def pruned(s):
            masks = prune.magnitude_masks({"w": w}, s, filter=lambda path, leaf: True)
            return prune.apply_masks({"w": w}, masks)["w"]

        return jax.vmap(pruned)(level_values)

    def correct(flat, x, y):
        logits = apply_fn(jax.tree.unflatten(treedef, flat), x)
        return jnp.sum((jnp.argmax(logits, axis=-1) == y).astype(jnp.int32))

    @jax.jit
    def scores(arrays, x, y):
        modified = [variants(n, arrays[i]) for n, i in zip(names, chosen, strict=True)]

        def member(layer, level):
            flat = list(arrays)
            for j, i in enumerate(chosen):
                flat[i] = jnp.where(layer == j, modified[j][level], arrays[i])
            return correct(flat, x, y)

        layer_ids = jnp.repeat(jnp.arange(len(chosen)), len(levels))
        level_ids = jnp.tile(jnp.arange(len(levels)), len(chosen))
        return correct(arrays, x, y), jax.vmap(member)(layer_ids, level_ids)

    # Counts of correct examples come back as integers: the percentages are exact, not float32 sums.
    base, counts = scores(arrays, jnp.asarray(x), jnp.asarray(y))
    base = 100.0 * int(base) / len(y)
    drops = base - 100.0 * np.asarray(counts, np.float64).reshape(len(chosen), len(levels)) / len(y)
    return Sensitivity(names, levels, drops, _ranking(names, drops), base)


def _pruned(w, sparsity) -> np.ndarray:
    """``w`` with its ``floor(sparsity * n)`` smallest magnitudes zeroed, lower index first among ties."""
    a = np.asarray(w)
    k = int(np.floor(np.float32(sparsity) * np.float32(a.size)))
    flat = a.ravel().copy()
    flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
    return flat.reshape(a.shape)


def layer_ablation(apply_fn, params, x, y, *, method: str = "quantize", levels=None, filter=None) -> Sensitivity:
    """The drops of :func:`layer_sensitivity`, measured one modified model at a time (the reference).

    A Python loop over layers and levels: each model is built through the
    storage path (quantize: :func:`hamjax.quant.quantize_params` of that
    leaf alone to integer codes, then :func:`hamjax.quant.dequantize_tree`;
    prune: the ``floor(s n)`` smallest ``|w|`` of that leaf set to zero in
    numpy, the count in float32 and ties broken by position as
    :func:`hamjax.prune.magnitude_masks` documents) and its accuracy is
    counted in numpy.
    Slower (one call per member), independent of the vmapped code.

    Args:
      apply_fn, params, x, y, method, levels, filter: as in :func:`layer_sensitivity`.

    Returns:
      A :class:`Sensitivity`, the same as :func:`layer_sensitivity` gives within float rounding.

    Raises:
      ValueError: as :func:`layer_sensitivity`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import autotune
      >>> params = {"w1": jnp.array([[1.0, -0.1], [0.2, 1.0]]), "w2": jnp.array([[1.0, 0.3], [0.1, 1.0]])}
      >>> f = lambda p, x: (x @ p["w1"]) @ p["w2"]
      >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]]), jnp.array([0, 1, 0])
      >>> autotune.layer_ablation(f, params, x, y, method="prune", levels=(0.5,)).drops.tolist()
      [[0.0], [0.0]]
    """
    where = "layer_ablation"
    levels = _check(where, method, levels, x, y)
    leaves, chosen, axes = _layers(where, apply_fn, params, x, filter)
    names = tuple(jax.tree_util.keystr(leaves[i][0]) for i in chosen)
    run = jax.jit(apply_fn)
    labels = np.asarray(y)

    def accuracy(p) -> float:
        return 100.0 * float(np.mean(np.argmax(np.asarray(run(p, x)), axis=-1) == labels))

    base = accuracy(params)
    drops = np.zeros((len(names), len(levels)))
    for j, name in enumerate(names):

        def only(path, leaf, name=name):
            return jax.tree_util.keystr(path) == name

        for k, level in enumerate(levels):
            if method == "quantize":
                stored = quant.quantize_params(params, bits=int(level), filter=only, channel_axes=axes)
                modified = quant.dequantize_tree(stored)
            else:
                modified = jax.tree_util.tree_map_with_path(
                    lambda path, a, level=level, only=only: _pruned(a, level) if only(path, a) else a, params
                )
            drops[j, k] = base - accuracy(modified)
    return Sensitivity(names, levels, drops, _ranking(names, drops), base)
