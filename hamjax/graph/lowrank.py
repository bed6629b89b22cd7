"""Low-rank factorisation: a layer's kernel replaced by two thin factors from a truncated SVD.

A dense kernel ``W`` (``in x out``) is replaced by ``U`` (``in x r``) and
``V`` (``r x out``) with ``U V`` the best rank-``r`` approximation of ``W``
(``U = A_r sqrt(S_r)``, ``V = sqrt(S_r) B_r^T`` from ``W = A S B^T``); the
layer then computes ``(x @ U) @ V``: ``r (in + out)`` multiply-adds per row
instead of ``in * out``. A convolution kernel is reshaped to
``(kh * kw * in) x out`` first: ``U`` becomes a convolution with ``r`` output
channels and ``V`` a ``1 x 1`` map to ``out``.

The rank of each layer is chosen by one of:

* ``rank``: the same rank everywhere (it must not exceed ``min(in, out)``);
* ``energy`` in ``(0, 1]``: the smallest rank keeping that fraction of the
  sum of squared singular values;
* ``budget`` in ``(0, 1]``: a fraction of the parameters, per layer
  (``scope="layer"``) or of the whole model (``scope="model"``: the highest
  common energy whose ranks fit).

A layer whose chosen rank saves no parameters stays dense.
:func:`lowrank` returns the pair ``(lowrank_apply(apply_fn), params)``
where each factored kernel leaf is a :class:`Factors` node holding ``u``
and ``v``, so training (:func:`hamjax.fit`) updates the factors.

Searching over energies with ``jax.vmap``: shapes must not depend on the
traced energy, so pass a static ``rank`` (the bucket: the width every
factor gets) together with a traced ``energy``; columns past the rank the
energy needs are zero. One compiled model serves every energy of a bucket;
use one bucket per distinct rank you want the speed of.

References:
  Denton et al., "Exploiting Linear Structure Within Convolutional Networks
  for Efficient Evaluation", NeurIPS 2014.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import ApplyFn, trainable
from hamjax._checks import check_choice, check_int, check_number, is_traced
from hamjax.jaxpr import find_sites, intercept

SCOPES = ("model", "layer")
"""Where a parameter ``budget`` applies: the whole model's parameters, or each layer's."""


@functools.partial(jax.tree_util.register_dataclass, data_fields=["u", "v"], meta_fields=["shape"])
@dataclasses.dataclass
class Factors:
    """The two factors that replace one kernel leaf; a pytree node whose leaves are ``u`` and ``v``.

    Attributes:
      u: the first factor in the layout the layer's op sees its weight, with
        the output-channel axis of size ``r``.
      v: ``(r, out)``, applied along the op's output-channel axis.
      shape: the replaced leaf's shape (static).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.graph import Factors
      >>> f = Factors(jnp.ones((4, 2)), jnp.ones((2, 3)), (4, 3))
      >>> [leaf.shape for leaf in jax.tree.leaves(f)]
      [(4, 2), (2, 3)]
    """

    u: jax.Array
    v: jax.Array
    shape: tuple[int, ...]


def _is_factors(node) -> bool:
    return isinstance(node, Factors)


def _check_energy(where: str, energy):
    if is_traced(energy):
        if np.ndim(energy) != 0:
            raise ValueError(f"{where}: energy must be a scalar in (0, 1], got a traced array of shape {energy.shape}")
        return energy
    return check_number(where, "energy", energy, minimum=0, exclusive_minimum=True, maximum=1)


def svd_factors(w, rank: int, *, out_axis: int = -1, energy=None) -> tuple[jax.Array, jax.Array]:
    """The rank-``rank`` factors of ``w`` from a truncated SVD, along its output axis.

    ``w`` is read as a matrix ``(everything else) x out``; the result is
    ``u`` shaped like ``w`` with ``out_axis`` of size ``rank`` and ``v``
    ``(rank, out)``, so that contracting ``u``'s ``rank`` axis with ``v``
    gives the best rank-``rank`` approximation of ``w``. With ``energy``
    (which may be traced, e.g. under ``jax.vmap``), the columns past the
    smallest rank keeping that fraction of the squared singular values are
    zero; shapes depend on ``rank`` only.

    Args:
      w: a kernel, at least 2-D.
      rank: static width of the factors, in ``[1, min(in, out)]``.
      out_axis: ``w``'s output-channel axis.
      energy: optional fraction in ``(0, 1]``.

    Returns:
      ``(u, v)``.

    Raises:
      ValueError: for a rank outside ``[1, min(in, out)]`` or an energy outside ``(0, 1]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.graph import svd_factors
      >>> w = jnp.outer(jnp.arange(1.0, 5.0), jnp.arange(1.0, 4.0))  # rank 1
      >>> u, v = svd_factors(w, 1)
      >>> u.shape, v.shape, bool(jnp.allclose(u @ v, w, atol=1e-4))
      ((4, 1), (1, 3), True)
    """
    w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"svd_factors: w must be at least 2-D, got shape {w.shape}")
    moved = jnp.moveaxis(w, out_axis, -1)
    matrix = moved.reshape(-1, moved.shape[-1]).astype(jnp.float32)
    rank = check_int("svd_factors", "rank", rank, minimum=1, maximum=min(matrix.shape))
    a, s, bt = jnp.linalg.svd(matrix, full_matrices=False)
    root = jnp.sqrt(s[:rank])
    if energy is not None:
        energy = _check_energy("svd_factors", energy)
        frac = jnp.cumsum(s**2) / jnp.maximum(jnp.sum(s**2), jnp.finfo(jnp.float32).tiny)
        before = jnp.concatenate([jnp.zeros((1,), frac.dtype), frac[:-1]])[:rank]
        root = jnp.where(before < jnp.asarray(energy, frac.dtype), root, jnp.zeros_like(root))
    u = (a[:, :rank] * root[None]).reshape(*moved.shape[:-1], rank)
    v = root[:, None] * bt[:rank]
    return jnp.moveaxis(u, -1, out_axis).astype(w.dtype), v.astype(w.dtype)


def _energy_rank(s: np.ndarray, energy: float) -> int:
    frac = np.cumsum(s**2) / max(float(np.sum(s**2)), np.finfo(np.float64).tiny)
    return int(min(np.searchsorted(frac, energy - 1e-12) + 1, len(s)))


@dataclasses.dataclass(frozen=True)
class _Layer:
    leaf: str
    out_axis: int  # the weight's output axis at the op
    m: int  # rows of the matrix (everything but the output axis)
    n: int  # output channels
    singular: np.ndarray
    transposed: bool  # a 2-D leaf the op reads transposed

    @property
    def dense(self) -> int:
        return self.m * self.n

    def cost(self, r: int) -> int:
        return r * (self.m + self.n)


def _weight_out_axis(site) -> int | None:
    """The weight's output-channel axis at the op, for the sites factoring supports."""
    if site.weight_operand != 1 or site.leaf is None:
        return None
    if site.primitive == "conv_general_dilated":
        dn = site.dimension_numbers
        grouped = site.weight_shape[dn.rhs_spec[1]] != site.activation_shape[dn.lhs_spec[1]]
        return None if grouped or len(site.weight_shape) < 3 else dn.rhs_spec[0]
    contract, batch = site.dimension_numbers
    if len(site.weight_shape) != 2 or batch[0] or len(contract[1]) != 1:
        return None
    return 1 - contract[1][0]


def _layers(where, apply_fn, params, x, skip, kw) -> list[_Layer]:
    sites = find_sites(apply_fn, params, x, **kw)
    uses: dict = {}
    for site in sites:
        uses[site.leaf] = uses.get(site.leaf, 0) + 1
    weights = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    layers = []
    for site in sites:
        axis = _weight_out_axis(site)
        if axis is None or uses[site.leaf] != 1 or site.leaf in skip or site.path in skip:
            continue
        w = _op_weight(weights[site.leaf], site, axis)
        if w is None:
            continue
        matrix = np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])
        if min(matrix.shape) < 2:
            continue
        s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
        transposed = w.ndim == 2 and site.leaf_channel_axes[0] != axis
        layers.append(_Layer(site.leaf, axis, matrix.shape[0], matrix.shape[1], s, transposed))
    if not layers:
        raise ValueError(f"{where}: the model has no dense or convolution kernel to factor")
    return layers


def _op_weight(leaf, site, out_axis: int) -> np.ndarray | None:
    """The leaf as the op sees it (itself, or a 2-D leaf transposed), or ``None`` for other layouts."""
    w = np.asarray(leaf)
    if site.leaf_channel_axes is None or len(site.leaf_channel_axes) != 1:
        return None
    if w.ndim == 2 and site.leaf_channel_axes[0] != out_axis:
        w = w.T
    elif site.leaf_channel_axes[0] != out_axis:
        return None
    return w if w.shape == site.weight_shape else None


def _rounded(layer: _Layer, r: int, multiple: int) -> int:
    """``r`` rounded down to a multiple of ``multiple`` (at least ``multiple``), within the layer's full rank."""
    return min(max(multiple, r - r % multiple), min(layer.m, layer.n))


def _ranks(where, layers, params_total, rank, energy, budget, scope, multiple=1) -> dict[str, int]:
    if rank is not None:
        out = {}
        for layer in layers:
            if rank > min(layer.m, layer.n):
                raise ValueError(
                    f"{where}: rank={rank} is larger than min(in, out)={min(layer.m, layer.n)} of {layer.leaf}"
                )
            out[layer.leaf] = rank
        return out
    if energy is not None:
        picked = {layer.leaf: _rounded(layer, _energy_rank(layer.singular, energy), multiple) for layer in layers}
        return {k: r for k, r in picked.items() if _saves(layers, k, r)}
    if scope == "layer":
        picked = {
            layer.leaf: _rounded(layer, max(1, int(budget * layer.dense // (layer.m + layer.n))), multiple)
            for layer in layers
        }
        return {k: r for k, r in picked.items() if _saves(layers, k, r)}
    fixed = params_total - sum(layer.dense for layer in layers)
    target = budget * params_total
    candidates = sorted(
        {1.0, *np.concatenate([np.cumsum(lay.singular**2) / np.sum(lay.singular**2) for lay in layers])}
    )
    best = None
    for e in candidates:
        ranks = {layer.leaf: _rounded(layer, _energy_rank(layer.singular, e), multiple) for layer in layers}
        total = fixed + sum(min(layer.cost(ranks[layer.leaf]), layer.dense) for layer in layers)
        if total <= target:
            best = ranks
        else:
            break
    if best is None:
        raise ValueError(
            f"{where}: budget={budget!r} is below what the smallest ranks of the factored layers need "
            f"(the other parameters alone are {fixed / params_total:.3f} of the model)"
        )
    return {k: r for k, r in best.items() if _saves(layers, k, r)}


def _saves(layers, leaf, r) -> bool:
    layer = next(lay for lay in layers if lay.leaf == leaf)
    return layer.cost(r) < layer.dense


def _apply_v(y, v, axis: int):
    out = jnp.tensordot(y, v.astype(y.dtype), axes=((axis,), (0,)))
    return out if axis in (-1, y.ndim - 1) else jnp.moveaxis(out, -1, axis)


def _site_out_axis(site) -> int:
    if site.primitive == "conv_general_dilated":
        return site.dimension_numbers.out_spec[1]
    return -1


def lowrank_apply(apply_fn):
    """A function transform: ``apply_fn`` on params whose kernel leaves may be :class:`Factors`.

    Each layer whose kernel leaf is a :class:`Factors` node computes
    ``(x @ u) @ v`` (a convolution with ``u``, then ``v`` along the output
    channels) in place of ``x @ W``, through :func:`hamjax.jaxpr.intercept`;
    every other op is the model's own. An :class:`hamjax.ApplyFn` stays one
    (train mode and batch statistics work), so :func:`hamjax.fit` trains
    the factors. The jaxpr is traced at each call: call it under ``jax.jit``.

    Args:
      apply_fn: any apply function of the contract.

    Returns:
      The apply function on factored params.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import graph
      >>> f = lambda p, x: x @ p["w"]
      >>> p = {"w": graph.Factors(jnp.ones((3, 1)), jnp.full((1, 2), 2.0), (3, 2))}
      >>> graph.lowrank_apply(f)(p, jnp.ones((1, 3))).tolist()
      [[6.0, 6.0]]
    """

    def split(params):
        nodes = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_factors)[0]
        factors = {jax.tree_util.keystr(p): n for p, n in nodes if _is_factors(n)}
        full = jax.tree.map(
            lambda n: jnp.zeros(n.shape, n.u.dtype) if _is_factors(n) else n, params, is_leaf=_is_factors
        )
        pending: dict = {}

        def hook(i, site, a, w):
            f = factors.get(site.leaf)
            if f is None:
                return a, w
            pending[site.path] = (f.v, _site_out_axis(site))
            return a, f.u.astype(w.dtype)

        def on_output(name, y):
            if name not in pending:
                return y
            v, axis = pending.pop(name)
            return _apply_v(y, v, axis)

        return full, hook, on_output

    if isinstance(apply_fn, ApplyFn):

        def fn(variables, x, *, train, rng, mutable, **kw):
            full, hook, on_output = split(variables)
            out = intercept(apply_fn, hook, on_output=on_output)(full, x, train=train, rng=rng, mutable=mutable, **kw)
            if not mutable:
                return out
            y, new = out
            return y, {
                c: (variables[c] if c in variables and c in new and _has_factors(variables[c]) else new[c]) for c in new
            }

        return ApplyFn(fn, apply_fn.collections)

    @functools.wraps(apply_fn)
    def factored(params, x, **kw):
        full, hook, on_output = split(params)
        return intercept(apply_fn, hook, on_output=on_output)(full, x, **kw)

    return factored


def _has_factors(tree) -> bool:
    return any(_is_factors(n) for n in jax.tree.leaves(tree, is_leaf=_is_factors))


def lowrank(
    apply_fn,
    params,
    x,
    *,
    rank: int | None = None,
    energy=None,
    budget: float | None = None,
    scope: str = "model",
    skip=(),
    rank_multiple: int = 1,
    **kw,
):
    """Factor the model's dense and convolution kernels by truncated SVD: ``(apply_fn, params) -> (apply_fn, params)``.

    Exactly one of ``energy`` or ``budget`` chooses each layer's rank, or
    ``rank`` fixes it; ``rank`` with ``energy`` gives every factor the
    static width ``rank`` and zeroes the columns past the rank the energy
    needs, which is how ``jax.vmap`` runs over traced energies (see the
    module docstring). Layers whose rank saves no parameters stay dense
    (except with ``rank``); kernels shared by two ops, computed kernels and
    grouped convolutions are left alone.

    Args:
      apply_fn: any apply function of the contract.
      params: its params (concrete: singular values pick the ranks).
      x: an example input (only its shape matters).
      rank: the rank of every factored layer, in ``[1, min(in, out)]``.
      energy: retained fraction of squared singular values, in ``(0, 1]``.
      budget: fraction of the parameters kept, in ``(0, 1]``.
      scope: one of :data:`SCOPES`, where ``budget`` applies.
      skip: site names or weight paths (``"params/head/kernel"``) to keep dense.
      rank_multiple: ranks chosen by ``energy`` or ``budget`` are rounded
        down to a multiple of it (8 or 16 suit CPU vector units: widths like
        155 run slower than 152).
      **kw: keyword arguments for ``apply_fn``.

    Returns:
      ``(lowrank_apply(apply_fn), factored_params)``; each factored kernel
      leaf is a :class:`Factors`.

    Raises:
      ValueError: naming the argument, before any factorisation: no or two
        rank choices, an energy or budget outside ``(0, 1]``, a rank above
        ``min(in, out)`` of a layer, a budget too small for rank 1.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax import graph
      >>> w = jnp.outer(jnp.arange(1.0, 9.0), jnp.arange(1.0, 7.0))  # rank 1, 8 x 6
      >>> f = lambda p, x: x @ p["w"]
      >>> g, q = graph.lowrank(f, {"w": w}, jnp.ones((1, 8)), energy=0.999)
      >>> q["w"].u.shape, q["w"].v.shape
      ((8, 1), (1, 6))
      >>> bool(jnp.allclose(jax.jit(g)(q, jnp.ones((2, 8))), f({"w": w}, jnp.ones((2, 8))), rtol=1e-4))
      True
    """
    where = "lowrank"
    if rank is None and energy is None and budget is None:
        raise ValueError(f"{where}: give one of rank=, energy= or budget= (or rank= with energy=), got none")
    if budget is not None and (rank is not None or energy is not None):
        raise ValueError(f"{where}: budget= chooses the ranks; it cannot be combined with rank= or energy=")
    if rank is not None:
        rank = check_int(where, "rank", rank, minimum=1)
    if energy is not None:
        energy = _check_energy(where, energy)
        if is_traced(energy) and rank is None:
            raise ValueError(f"{where}: a traced energy needs a static rank= (the factors' width) as its bucket")
    if budget is not None:
        budget = check_number(where, "budget", budget, minimum=0, exclusive_minimum=True, maximum=1)
    check_choice(where, "scope", scope, SCOPES)
    rank_multiple = check_int(where, "rank_multiple", rank_multiple, minimum=1)
    skip = {skip} if isinstance(skip, str) else set(skip)
    layers = _layers(where, apply_fn, params, x, skip, kw)
    total = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(trainable(apply_fn, params)))
    ranks = _ranks(where, layers, total, rank, None if rank is not None else energy, budget, scope, rank_multiple)
    by_leaf = {layer.leaf: layer for layer in layers}
    factored_energy = energy if rank is not None else None

    def replace(path, leaf):
        key = jax.tree_util.keystr(path)
        if key not in ranks:
            return leaf
        layer = by_leaf[key]
        w = jnp.asarray(leaf)
        w_op = w.T if layer.transposed else w
        u, v = svd_factors(w_op, ranks[key], out_axis=layer.out_axis, energy=factored_energy)
        return Factors(u, v, tuple(np.shape(leaf)))

    return lowrank_apply(apply_fn), jax.tree_util.tree_map_with_path(replace, params)
