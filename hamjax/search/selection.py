"""Selection: which members of a population become parents, from a fitness array.

Every function takes ``fitness``, a 1-D real array of shape ``(P,)`` with
``P >= 1``, and returns int32 member indices. Conventions:

* higher fitness is better;
* NaN counts as ``-inf`` (:func:`sanitize`), so a diverged member (see
  :func:`hamjax.search.population.fitness`) ranks last, loses every
  tournament against a finite member and gets no roulette weight;
* members that compare equal are ordered by index, lower first, so every
  method sees one strict order (:func:`elite` lists it);
* every function is pure and jittable with the shape-changing arguments
  (``num``, ``k``, ``replace``, ``n``, ``method``) static, and vmaps over
  keys; ``pressure`` may be a traced array, so a population of selection
  pressures is one vmapped call;
* bad arguments raise ``ValueError`` before tracing: shapes and static
  arguments always, values (``pressure``) whenever they are concrete.

:func:`probabilities` gives the exact per-member probability of one pick for
each sampling method, to test the samplers and to compare their pressure.

References:
  Goldberg & Deb, "A Comparative Analysis of Selection Schemes Used in
  Genetic Algorithms", FOGA 1991.
  Baker, "Adaptive Selection Methods for Genetic Algorithms", ICGA 1985.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_choice, check_int, check_number, is_traced

METHODS = ("tournament", "roulette", "rank")
# The keywords each method of probabilities takes.
_KEYWORDS = {"tournament": ("k", "replace"), "roulette": (), "rank": ("pressure",)}
# Roulette's floor, as a fraction of the finite fitness range: the worst finite
# member keeps a small chance instead of none.
ROULETTE_EPS = 1e-3


def _check_fitness(where: str, fitness) -> int:
    """Checks ``fitness`` is ``(P,)`` with ``P >= 1`` and returns ``P``."""
    shape = np.shape(fitness)
    if len(shape) != 1:
        raise ValueError(f"{where}: fitness must be a 1-D array of shape (P,), got shape {shape}")
    if shape[0] < 1:
        raise ValueError(f"{where}: population size must be >= 1, got fitness of shape {shape}")
    return shape[0]


def _check_picks(where: str, fitness, num) -> tuple[int, int]:
    """The check every sampler starts with: ``(P,)`` fitness and ``num >= 1`` picks; returns ``(P, num)``."""
    return _check_fitness(where, fitness), check_int(where, "num", num, minimum=1)


def _check_pressure(where: str, pressure) -> None:
    if np.ndim(pressure) != 0:
        raise ValueError(f"{where}: pressure must be a scalar, got shape {np.shape(pressure)}")
    if not is_traced(pressure):
        check_number(where, "pressure", pressure, minimum=1, maximum=2)


def sanitize(fitness) -> jax.Array:
    """A float32 copy of ``fitness`` with NaN replaced by ``-inf``.

    Args:
      fitness: real array of any shape.

    Returns:
      float32 array of the same shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.search import selection
      >>> selection.sanitize(jnp.array([1.0, jnp.nan])).tolist()
      [1.0, -inf]
    """
    f = jnp.asarray(fitness).astype(jnp.float32)
    return jnp.where(jnp.isnan(f), -jnp.inf, f)


def _order(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``order[j]``: the member at position ``j`` (0 = best); ``position``: its inverse."""
    # A stable ascending sort of -f keeps equal members in index order; -inf
    # (and NaN, already -inf) becomes +inf and goes last.
    order = jnp.argsort(-f, stable=True).astype(jnp.int32)
    size = f.shape[0]
    position = jnp.zeros(size, jnp.int32).at[order].set(jnp.arange(size, dtype=jnp.int32))
    return order, position


def elite(fitness, n: int) -> jax.Array:
    """The indices of the ``n`` best members, best first.

    Ties go to the lower index; NaN and ``-inf`` members come last.

    Args:
      fitness: ``(P,)`` real array.
      n: static int, ``0 <= n <= P``.

    Returns:
      ``(n,)`` int32 member indices.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.search import selection
      >>> selection.elite(jnp.array([0.5, jnp.nan, 2.0, 0.5]), 3).tolist()
      [2, 0, 3]
    """
    size = _check_fitness("elite", fitness)
    n = check_int("elite", "n", n, minimum=0, maximum=size)
    return _elite(fitness, n)


@functools.partial(jax.jit, static_argnames="n")
def _elite(fitness, n: int) -> jax.Array:
    order, _ = _order(sanitize(fitness))
    return order[:n]


def tournament(key, fitness, num: int, *, k: int = 2, replace: bool = True) -> jax.Array:
    """``num`` tournament picks: each the best of ``k`` uniformly drawn contestants.

    With the members in their strict order (position ``r``, 0 = best, ties by
    index), the winner is the contestant with the smallest position, so

    * with replacement: ``P(r) = ((P - r)^k - (P - r - 1)^k) / P^k``;
    * without (``k`` distinct contestants): ``P(r) = C(P - r - 1, k - 1) / C(P, k)``.

    ``k = 1`` is uniform; larger ``k`` raises the pressure.

    Args:
      key: a jax PRNG key.
      fitness: ``(P,)`` real array.
      num: static int >= 1, the number of picks.
      k: static int, ``1 <= k <= P``, contestants per pick.
      replace: static bool, whether one pick's contestants are drawn with
        replacement. Picks are always independent of each other.

    Returns:
      ``(num,)`` int32 member indices.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from hamjax.search import selection
      >>> fitness = jnp.array([0.1, 3.0, -2.0, 1.0])
      >>> picks = selection.tournament(jax.random.key(0), fitness, 6, k=4, replace=False)
      >>> picks.tolist()
      [1, 1, 1, 1, 1, 1]
    """
    size, num = _check_picks("tournament", fitness, num)
    k = check_int("tournament", "k", k, minimum=1, maximum=size)
    return _tournament(key, fitness, num, k, bool(replace))


@functools.partial(jax.jit, static_argnames=("num", "k", "replace"))
def _tournament(key, fitness, num: int, k: int, replace: bool) -> jax.Array:
    size = fitness.shape[0]
    order, position = _order(sanitize(fitness))
    if replace:
        # Modulo bias is below P / 2^32, and this compiles much faster than randint.
        bits = jax.random.bits(key, (num, k), jnp.uint32)
        contestants = (bits % jnp.uint32(size)).astype(jnp.int32)
    else:
        # The k smallest of P uniform numbers sit at k distinct random members.
        _, contestants = jax.lax.top_k(-jax.random.uniform(key, (num, size)), k)
    best = jnp.min(position[contestants], axis=1)
    return order[best]


def _roulette_weights(f: jax.Array) -> jax.Array:
    finite = jnp.isfinite(f)
    # An exact power-of-two rescale into (-1, 1), so that f - min cannot
    # overflow; dividing by the range instead would flush to zero on XLA:CPU
    # for ranges above about 8.5e37.
    _, exponent = jnp.frexp(jnp.max(jnp.where(finite, jnp.abs(f), 0.0)))
    g = jnp.ldexp(jnp.where(finite, f, 0.0), -exponent)
    low = jnp.min(jnp.where(finite, g, jnp.inf))
    spread = jnp.max(jnp.where(finite, g, -jnp.inf)) - low
    floor = ROULETTE_EPS * jnp.where(spread > 0, spread, 1.0)
    shifted = jnp.where(finite, g - low + floor, 0.0)
    top = f == jnp.inf
    return jnp.where(jnp.any(top), top.astype(jnp.float32), jnp.where(jnp.any(finite), shifted, 1.0))


@jax.jit
def _roulette_probabilities(fitness) -> jax.Array:
    weights = _roulette_weights(sanitize(fitness))
    return weights / jnp.sum(weights)


def roulette(key, fitness, num: int) -> jax.Array:
    """``num`` fitness-proportional picks (with replacement), shifted so any sign works.

    With ``m`` and ``M`` the smallest and largest finite fitness and
    ``s = M - m`` (``1`` when ``M == m``), member ``i`` has weight

        ``w_i = f_i - m + eps * s``,  ``eps =`` :data:`ROULETTE_EPS` ``= 1e-3``

    and probability ``w_i / sum(w)``: the worst finite member keeps a small
    chance, and adding a constant to every fitness, or scaling by a positive
    factor, changes nothing. NaN and ``-inf`` members get weight 0. If any
    member is ``+inf`` the ``+inf`` members share all of the probability; if
    none is finite, the pick is uniform over all members.

    Args:
      key: a jax PRNG key.
      fitness: ``(P,)`` real array.
      num: static int >= 1, the number of picks.

    Returns:
      ``(num,)`` int32 member indices.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from hamjax.search import selection
      >>> picks = selection.roulette(jax.random.key(0), jnp.array([-5.0, jnp.nan, 5.0]), 4)
      >>> bool(jnp.all(picks != 1))
      True
    """
    _, num = _check_picks("roulette", fitness, num)
    return _categorical(key, _roulette_probabilities(fitness), num)


@functools.partial(jax.jit, static_argnames="num")
def _categorical(key, p: jax.Array, num: int) -> jax.Array:
    """``num`` draws from ``p`` by inverse CDF: one uniform per draw, not one per member."""
    cdf = jnp.cumsum(p)
    total = cdf[-1]
    # Kept strictly below the total so that the first member whose cdf exceeds
    # it exists and has p > 0: a zero-probability member is never drawn.
    x = jnp.minimum(jax.random.uniform(key, (num,)) * total, jnp.nextafter(total, 0.0))
    return jnp.searchsorted(cdf, x, side="right").astype(jnp.int32)


@jax.jit
def _rank_probabilities(fitness, pressure) -> jax.Array:
    size = fitness.shape[0]
    if size == 1:
        return jnp.ones(1, jnp.float32)
    _, position = _order(sanitize(fitness))
    linear_rank = (size - 1 - position).astype(jnp.float32)
    s = jnp.asarray(pressure, jnp.float32)
    return (2.0 - s) / size + 2.0 * linear_rank * (s - 1.0) / (size * (size - 1))


def rank(key, fitness, num: int, *, pressure=1.5) -> jax.Array:
    """``num`` linear-ranking picks (Baker), with replacement.

    Members are ranked ascending, worst ``r = 0`` to best ``r = P - 1``
    (equal fitness: the lower index ranks higher; NaN and ``-inf`` rank
    lowest), and picked with probability

        ``p_r = (2 - s) / P + 2 r (s - 1) / (P (P - 1))``

    (``1`` when ``P == 1``). ``s = pressure`` is the expected number of picks
    of the best member per ``P`` picks: ``1`` is uniform, ``2`` gives the
    worst member probability 0. Only the order matters, not the fitness
    scale.

    Args:
      key: a jax PRNG key.
      fitness: ``(P,)`` real array.
      num: static int >= 1, the number of picks.
      pressure: scalar in ``[1, 2]``; may be traced (checked when concrete).

    Returns:
      ``(num,)`` int32 member indices.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from hamjax.search import selection
      >>> picks = selection.rank(jax.random.key(0), jnp.array([3.0, -1.0]), 5, pressure=2.0)
      >>> picks.tolist()
      [0, 0, 0, 0, 0]
    """
    _, num = _check_picks("rank", fitness, num)
    _check_pressure("rank", pressure)
    return _categorical(key, _rank_probabilities(fitness, pressure), num)


def _tournament_by_position(size: int, k: int, replace: bool) -> np.ndarray:
    """``(P,)`` float64 probabilities of each position (0 = best); depends on static values only."""
    r = np.arange(size, dtype=np.float64)
    if replace:
        # Fractions first, so that P^k cannot overflow.
        return ((size - r) / size) ** k - ((size - r - 1) / size) ** k
    # C(P - r - 1, k - 1) / C(P, k) as a running product over r: no factorials to overflow.
    step = np.maximum(size - r[:-1] - k, 0.0) / (size - r[:-1] - 1)
    return (k / size) * np.cumprod(np.concatenate([[1.0], step]))


@jax.jit
def _positions(fitness) -> jax.Array:
    _, position = _order(sanitize(fitness))
    return position


def _tournament_probabilities(fitness, k: int, replace: bool) -> jax.Array:
    # Not jitted with k static: the table is numpy, so a new k costs no compilation.
    by_position = jnp.asarray(_tournament_by_position(np.shape(fitness)[0], k, replace), jnp.float32)
    return by_position[_positions(fitness)]


def probabilities(fitness, method: str, **kwargs) -> jax.Array:
    """The exact probability that one pick of ``method`` returns each member.

    Args:
      fitness: ``(P,)`` real array.
      method: static, one of :data:`METHODS`: ``"tournament"`` (keywords
        ``k=2``, ``replace=True``), ``"roulette"`` (none) or ``"rank"``
        (``pressure=1.5``), with the meanings of those functions.
      **kwargs: that method's keywords.

    Returns:
      ``(P,)`` float32 probabilities summing to 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.search import selection
      >>> p = selection.probabilities(jnp.array([2.0, 0.0, 1.0]), "tournament", k=2)
      >>> [round(x * 9) for x in p.tolist()]
      [5, 1, 3]
    """
    size = _check_fitness("probabilities", fitness)
    check_choice("probabilities", "method", method, METHODS)
    unknown = set(kwargs) - set(_KEYWORDS[method])
    if unknown:
        raise TypeError(f"probabilities: {method} takes no keyword(s) {sorted(unknown)}")
    if method == "tournament":
        k = check_int("probabilities", "k", kwargs.get("k", 2), minimum=1, maximum=size)
        return _tournament_probabilities(fitness, k, bool(kwargs.get("replace", True)))
    if method == "roulette":
        return _roulette_probabilities(fitness)
    pressure = kwargs.get("pressure", 1.5)
    _check_pressure("probabilities", pressure)
    return _rank_probabilities(fitness, pressure)
