"""Evolutionary operators over genome batches, and population-based training.

Genome batches and the :class:`~hamjax.search.space.Space` that describes them
live in :mod:`hamjax.search.space`; ``Int``, ``Float``, ``Choice`` and
``Space`` are re-exported here. Every operator on genome batches is pure and
jittable with the space as a static closure (a :class:`Space` is hashable):
:func:`mutate`, :func:`crossover`, :func:`blend`. Each compiles once per
space and batch size, and draws its randomness in one call, so its compile
time does not grow with the number of genes.

:func:`exploit_explore` is one population-based-training step over any
params pytree with a leading member axis, and :func:`replace_nonfinite`
restarts diverged members from healthy ones.

References:
  Jaderberg et al., "Population Based Training of Neural Networks", 2017.
  Eshelman & Schaffer, "Real-Coded Genetic Algorithms and Interval-Schemata"
  (BLX-alpha), 1993.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_number, is_traced
from hamjax.search.encoding import assemble, from_search, layout_of, stack_columns, to_search
from hamjax.search.space import Choice, Float, Gene, Genomes, Int, Space, check_genomes

# The space's names are re-exported, so evolution.Space and friends keep working.
__all__ = [
    "Choice",
    "Float",
    "Gene",
    "Genomes",
    "Int",
    "Space",
    "blend",
    "crossover",
    "exploit_explore",
    "mutate",
    "replace_nonfinite",
]


def _canonical(space: Space, genomes: Genomes) -> Genomes:
    return {
        name: jnp.asarray(genomes[name]).astype(jnp.float32 if isinstance(gene, Float) else jnp.int32)
        for name, gene in space.genes.items()
    }


def _check_unless_traced(where: str, arg: str, value: Any, **bounds: float) -> None:
    """Checks a scalar hyperparameter that may be traced; a tracer's range is the caller's contract."""
    if not is_traced(value):
        check_number(where, arg, value, **bounds)


def mutate(
    key: jax.Array, space: Space, genomes: Genomes, *, rate: float | jax.Array = 0.2, scale: float | jax.Array = 0.1
) -> Genomes:
    """Mutates each gene of each member independently with probability ``rate``.

    A ``Float`` gene takes a Gaussian step of standard deviation
    ``scale * (high - low)`` (of ``log(high) - log(low)`` in log space for log
    genes); an ``Int`` gene a step of ``±1 .. max(1, round(scale * (high - low)))``;
    both are clipped into bounds. A ``Choice`` gene is resampled uniformly among
    its *other* options. Genes that do not mutate are returned bit-identical.

    Args:
      key: a PRNG key.
      space: the :class:`Space` (static).
      genomes: a genome batch ``name -> (N,)``.
      rate: per-gene mutation probability in ``[0, 1]``; may be a traced scalar.
      scale: step size as a fraction of each gene's range; may be a traced scalar.

    Returns:
      The mutated genome batch, same shapes and dtypes.

    Examples:
      >>> import jax
      >>> space = Space({"lr": Float(1e-4, 1e-1, log=True), "depth": Int(1, 8)})
      >>> g = space.sample(jax.random.key(0), 4)
      >>> mutated = jax.jit(lambda k, g: mutate(k, space, g, rate=0.5))(jax.random.key(1), g)
      >>> space.validate(mutated)
    """
    genomes = check_genomes("mutate", "genomes", space, genomes)
    _check_unless_traced("mutate", "rate", rate, minimum=0, maximum=1)
    _check_unless_traced("mutate", "scale", scale, minimum=0)
    return _mutate(key, space, genomes, rate, scale)


@functools.partial(jax.jit, static_argnums=1)
def _mutate(key: jax.Array, space: Space, genomes: Genomes, rate: jax.Array, scale: jax.Array) -> Genomes:
    lay = layout_of(space)
    n, f, d = jnp.shape(genomes[space.names[0]])[0], len(lay.floats), len(lay.discrete)
    # One draw for everything: each random call adds a threefry kernel, which dominates compile time.
    # Float columns: [mutates?, normal step]; discrete: [mutates?, step size or option, direction].
    u = jax.random.uniform(key, (n, 2 * f + 3 * d), jnp.float32)
    groups = []
    if f:
        x = stack_columns(genomes, lay.floats, jnp.float32)
        # A standard normal as jax.random.normal makes it, from uniforms on (-1, 1).
        z = np.sqrt(2.0) * jax.lax.erf_inv(
            jnp.maximum(2.0 * u[:, f : 2 * f] - 1.0, np.nextafter(np.float32(-1), np.float32(0)))
        )
        s = to_search(lay, x) + scale * (lay.high - lay.low)[None, :] * z
        groups.append((lay.floats, jnp.where(u[:, :f] < rate, from_search(lay, s), x)))
    if d:
        v = stack_columns(genomes, lay.discrete, jnp.int32)
        mutates, pick, up = (u[:, 2 * f + r * d : 2 * f + (r + 1) * d] for r in range(3))
        low, high = lay.int_low[None, :], lay.int_high[None, :]
        # Int: a step of 1..max_step either way, limited by the room left on each side
        # (high - v and v - low fit in int32; v +- step may not).
        max_step = jnp.clip(jnp.round(scale * (high - low).astype(jnp.float32)), 1, 2**30).astype(jnp.int32)
        step = jnp.minimum(jnp.floor(pick * max_step.astype(jnp.float32)).astype(jnp.int32) + 1, max_step)
        stepped = jnp.where(up < 0.5, v + jnp.minimum(step, high - v), v - jnp.minimum(step, v - low))
        # Choice: shift the index by 1..count-1 (mod count), uniform over the other options.
        count = high - low + 1
        shift = (
            jnp.minimum(jnp.floor(pick * (count - 1).astype(jnp.float32)).astype(jnp.int32), jnp.maximum(count - 2, 0))
            + 1
        )
        other = jnp.where(count > 1, low + (v - low + shift) % jnp.maximum(count, 1), v)
        new = jnp.where(lay.choice[None, :], other, stepped)
        groups.append((lay.discrete, jnp.where(mutates < rate, new, v)))
    return assemble(space.names, *groups)


def crossover(
    key: jax.Array, space: Space, parents_a: Genomes, parents_b: Genomes, *, rate: float | jax.Array = 0.5
) -> Genomes:
    """Uniform crossover: each gene of each child comes from ``parents_b`` with probability ``rate``, else from ``parents_a``.

    Args:
      key: a PRNG key.
      space: the :class:`Space` (static).
      parents_a, parents_b: genome batches of the same length ``N``.
      rate: probability of taking a gene from ``parents_b``; may be traced.

    Returns:
      The ``(N,)`` children genome batch.

    Examples:
      >>> import jax
      >>> space = Space({"x": Float(0.0, 1.0), "n": Int(0, 3)})
      >>> a, b = space.sample(jax.random.key(0), 4), space.sample(jax.random.key(1), 4)
      >>> child = crossover(jax.random.key(2), space, a, b, rate=1.0)
      >>> bool((child["x"] == b["x"]).all())
      True
    """
    a = check_genomes("crossover", "parents_a", space, parents_a)
    b = check_genomes("crossover", "parents_b", space, parents_b)
    _check_same_length("crossover", a, b)
    _check_unless_traced("crossover", "rate", rate, minimum=0, maximum=1)
    return _crossover(key, space, a, b, rate)


@functools.partial(jax.jit, static_argnums=1)
def _crossover(key: jax.Array, space: Space, a: Genomes, b: Genomes, rate: jax.Array) -> Genomes:
    a, b = _canonical(space, a), _canonical(space, b)
    u = jax.random.uniform(key, (a[space.names[0]].shape[0], len(space)), jnp.float32)
    return {n: jnp.where(u[:, j] < rate, b[n], a[n]) for j, n in enumerate(space.names)}


def _check_same_length(where: str, a: Genomes, b: Genomes) -> None:
    na, nb = jnp.shape(next(iter(a.values())))[0], jnp.shape(next(iter(b.values())))[0]
    if na != nb:
        raise ValueError(f"{where}: the parents must have the same number of members, got {na} and {nb}")


def blend(key: jax.Array, space: Space, a: Genomes, b: Genomes, *, alpha: float | jax.Array = 0.5) -> Genomes:
    """BLX-alpha crossover: a ``Float`` child is uniform on ``[lo - alpha d, hi + alpha d]``, clipped into bounds.

    ``lo, hi`` are the parents' smaller and larger values and ``d = hi - lo``
    (all in log space for log genes). ``Int`` and ``Choice`` genes take uniform
    crossover with rate 0.5.

    Args:
      key: a PRNG key.
      space: the :class:`Space` (static).
      a, b: parent genome batches of the same length ``N``.
      alpha: how far beyond the parents' interval a child may land, ``>= 0``.

    Returns:
      The ``(N,)`` children genome batch.

    Examples:
      >>> import jax
      >>> space = Space({"x": Float(0.0, 1.0)})
      >>> child = blend(jax.random.key(0), space, {"x": jnp.array([0.2])}, {"x": jnp.array([0.4])}, alpha=0.0)
      >>> bool(0.2 <= child["x"][0] <= 0.4)
      True
    """
    a = check_genomes("blend", "a", space, a)
    b = check_genomes("blend", "b", space, b)
    _check_same_length("blend", a, b)
    _check_unless_traced("blend", "alpha", alpha, minimum=0)
    return _blend(key, space, a, b, alpha)


@functools.partial(jax.jit, static_argnums=1)
def _blend(key: jax.Array, space: Space, a: Genomes, b: Genomes, alpha: jax.Array) -> Genomes:
    lay = layout_of(space)
    n, f = jnp.shape(a[space.names[0]])[0], len(lay.floats)
    u = jax.random.uniform(key, (n, len(space)), jnp.float32)
    groups = []
    if f:
        x = to_search(lay, stack_columns(a, lay.floats, jnp.float32))
        y = to_search(lay, stack_columns(b, lay.floats, jnp.float32))
        lo, d = jnp.minimum(x, y), jnp.abs(x - y)
        groups.append((lay.floats, from_search(lay, lo - alpha * d + u[:, :f] * (1 + 2 * alpha) * d)))
    if lay.discrete:
        x, y = stack_columns(a, lay.discrete, jnp.int32), stack_columns(b, lay.discrete, jnp.int32)
        groups.append((lay.discrete, jnp.where(u[:, f:] < 0.5, y, x)))
    return assemble(space.names, *groups)


# ---------------------------------------------------------------- population-based training


def _check_population(fitness: Any, params: Any, hparams: Mapping[str, Any] | None) -> tuple[jax.Array, int]:
    fitness = jnp.asarray(fitness)
    if fitness.ndim != 1 or fitness.shape[0] < 1:
        raise ValueError(f"fitness must be a (P,) array with P >= 1, got shape {fitness.shape}")
    p = fitness.shape[0]
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != p:
            raise ValueError(
                f"params leaf {jax.tree_util.keystr(path)} must have leading member axis {p}, got shape {shape}"
            )
    if hparams is not None:
        if not isinstance(hparams, Mapping):
            raise ValueError(f"hparams must be a dict name -> (P,) array, got {type(hparams).__name__}")
        for name, h in hparams.items():
            if jnp.shape(h) != (p,) or not jnp.issubdtype(jnp.result_type(h), jnp.floating):
                raise ValueError(
                    f"hparams[{name!r}] must be a ({p},) float array, got shape {jnp.shape(h)}, dtype {jnp.result_type(h)}"
                )
    return fitness, p


def _gather(tree: Any, source: jax.Array) -> Any:
    return jax.tree.map(lambda leaf: jnp.asarray(leaf)[source], tree)


def exploit_explore(
    key: jax.Array,
    fitness: jax.Array,
    params: Any,
    hparams: Mapping[str, jax.Array] | None,
    *,
    fraction: float = 0.25,
    factors: Sequence[float] = (0.8, 1.2),
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[Any, dict[str, jax.Array] | None, jax.Array]:
    """One population-based-training step: the worst members restart from perturbed copies of the best.

    The ``k = floor(fraction * P)`` members of lowest fitness (at least one when
    ``P >= 2``; NaN counts as ``-inf``; ties broken by member index) each copy
    params and hparams from a member drawn uniformly among the ``k`` best
    (*exploit*), then multiply each hparam by a factor drawn uniformly from
    ``factors`` and clip it into ``bounds`` (*explore*). Other members are
    returned bit-identical.

    Args:
      key: a PRNG key.
      fitness: ``(P,)`` scores, higher is better.
      params: any pytree whose leaves have leading axis ``P`` (weights,
        optimizer state, ...).
      hparams: ``name -> (P,)`` float arrays, or ``None``.
      fraction: static share replaced, ``0 < fraction <= 0.5``.
      factors: perturbation factors, drawn uniformly per member and hparam.
      bounds: optional ``name -> (low, high)`` to clip perturbed hparams into.

    Returns:
      ``(params, hparams, source)`` where ``source`` is the ``(P,)`` int32 index
      of the member each one copied (itself when not replaced).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w": jnp.arange(8.0)[:, None] * jnp.ones((8, 3))}
      >>> hparams = {"lr": jnp.full((8,), 0.1)}
      >>> fitness = jnp.arange(8.0)
      >>> params, hparams, source = exploit_explore(jax.random.key(0), fitness, params, hparams)
      >>> bool((source[:2] >= 6).all()), source[2:].tolist()  # 0 and 1 copied one of the best two
      (True, [2, 3, 4, 5, 6, 7])

    References:
      Jaderberg et al., "Population Based Training of Neural Networks", 2017.
    """
    fitness, p = _check_population(fitness, params, hparams)
    fraction = check_number("exploit_explore", "fraction", fraction, minimum=0, exclusive_minimum=True, maximum=0.5)
    factors = jnp.asarray(factors)
    if factors.ndim != 1 or factors.shape[0] < 1:
        raise ValueError(f"factors must be a non-empty 1-D sequence, got shape {factors.shape}")
    bounds = dict(bounds or {})
    unknown = sorted(set(bounds) - set(hparams or {}))
    if unknown:
        raise ValueError(f"bounds names {unknown} are not hparams {sorted(hparams or {})}")
    for name, bound in bounds.items():
        if not isinstance(bound, Sequence) or len(bound) != 2:
            raise ValueError(f"bounds[{name!r}] must be a (low, high) pair, got {bound!r}")
        if all(isinstance(b, int | float) for b in bound) and bound[0] > bound[1]:
            raise ValueError(f"bounds[{name!r}] must have low <= high, got {bound!r}")
    n = max(1, math.floor(fraction * p)) if p >= 2 else 0
    if n == 0:
        return params, None if hparams is None else dict(hparams), jnp.arange(p, dtype=jnp.int32)
    hparams = None if hparams is None else {k: jnp.asarray(v) for k, v in hparams.items()}
    return _exploit_explore(key, fitness, params, hparams, factors, bounds, jnp.asarray(n, jnp.int32))


@jax.jit
def _exploit_explore(key, fitness, params, hparams, factors, bounds, n):
    # n is traced: one compile serves every fraction for a population size.
    p = fitness.shape[0]
    order = jnp.argsort(jnp.where(jnp.isnan(fitness), -jnp.inf, fitness), stable=True)  # worst first
    rank = jnp.zeros((p,), jnp.int32).at[order].set(jnp.arange(p, dtype=jnp.int32))
    replaced = rank < n
    u = jax.random.uniform(key, (1 + len(hparams or {}), p))
    donor = order[p - n + jnp.minimum(jnp.floor(u[0] * n.astype(u.dtype)).astype(jnp.int32), n - 1)]
    source = jnp.where(replaced, donor, jnp.arange(p, dtype=jnp.int32))

    new_hparams = None
    if hparams is not None:
        new_hparams = {}
        num_factors = factors.shape[0]
        for i, (name, h) in enumerate(hparams.items()):
            pick = jnp.minimum(jnp.floor(u[1 + i] * num_factors).astype(jnp.int32), num_factors - 1)
            perturbed = h[source] * factors[pick].astype(h.dtype)
            if name in bounds:
                low, high = bounds[name]
                perturbed = jnp.clip(perturbed, low, high)
            new_hparams[name] = jnp.where(replaced, perturbed.astype(h.dtype), h)
    return _gather(params, source), new_hparams, source


def replace_nonfinite(
    key: jax.Array, fitness: jax.Array, params: Any, hparams: Mapping[str, jax.Array] | None = None
) -> tuple[Any, dict[str, jax.Array] | None, jax.Array]:
    """Members with non-finite fitness copy params (and hparams) from a uniformly drawn finite member.

    The fitness itself is not changed: scoring the restarted members is the
    caller's business.

    Args:
      key: a PRNG key.
      fitness: ``(P,)`` scores.
      params: a pytree whose leaves have leading axis ``P``.
      hparams: optional ``name -> (P,)`` float arrays.

    Returns:
      ``(params, hparams, source)``; ``source`` is the ``(P,)`` int32 index each
      member copied (itself when its fitness was finite).

    Raises:
      ValueError: if ``fitness`` is concrete and no member is finite. Under
        tracing such a population is returned unchanged.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w": jnp.array([[1.0], [jnp.nan], [3.0]])}
      >>> params, _, source = replace_nonfinite(jax.random.key(0), jnp.array([0.5, jnp.nan, 0.2]), params)
      >>> bool(jnp.isfinite(params["w"]).all()), int(source[0])
      (True, 0)
    """
    fitness, p = _check_population(fitness, params, hparams)
    if not is_traced(fitness) and not np.isfinite(np.asarray(fitness)).any():
        raise ValueError(f"replace_nonfinite: no member has finite fitness (P={p}), nothing to copy from")
    return _replace_nonfinite(key, fitness, params, None if hparams is None else dict(hparams))


@jax.jit
def _replace_nonfinite(key, fitness, params, hparams):
    p = fitness.shape[0]
    finite = jnp.isfinite(fitness)
    donor = jax.random.categorical(key, jnp.where(finite, 0.0, -jnp.inf), shape=(p,)).astype(jnp.int32)
    keep = finite | ~finite.any()
    source = jnp.where(keep, jnp.arange(p), donor).astype(jnp.int32)
    new_hparams = None if hparams is None else {n: jnp.asarray(h)[source] for n, h in hparams.items()}
    return _gather(params, source), new_hparams, source
