"""Populations: many models trained in one compiled call, one member per slice of a leading axis.

A population is any pytree whose leaves carry a leading member axis ``P``
(:func:`stack`, :func:`member`, :func:`init`). :class:`Population` (defined in
:mod:`hamjax.search.trainer`, re-exported here with its state, hyperparameters
and executions) trains and evaluates every member with one jitted function,
with per-member learning rates, weight decays, sparsities, bit widths and
distillation temperatures.

Population-based training (:func:`exploit`, :func:`train_pbt`): every round
trains all members, scores them, and the worst restart from copies of the
best (weights, optimizer state, hyperparameters) with perturbed
hyperparameters.

A member whose loss or parameters become NaN or inf gets fitness ``-inf``
(:func:`fitness`); members never mix inside a step, so it cannot poison the
others, and :func:`replace_diverged` copies a healthy member over it.

Sharding: :func:`shard` places the member axis on a one-axis device mesh
(``jax.sharding.Mesh(devices, ("members",))``); the jitted step then runs
each device's members where they live. Under ``jax.distributed.initialize()``
``jax.devices()`` lists every host's devices, so the same code spreads a
population over hosts: build the mesh from ``jax.devices()`` and feed each
host its local shard of the batch (see :func:`shard`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._checks import check_int
from hamjax.quant import MAX_BITS, MIN_BITS
from hamjax.search import evolution
from hamjax.search.member_hparams import (
    HYPERPARAMETERS,
    OPTIMIZER_HYPERPARAMETERS,
    SCHEDULE_HYPERPARAMETERS,
    TRANSFORM_HYPERPARAMETERS,
)
from hamjax.search.trainer import DISTILL_DEFAULTS, EXECUTIONS, Population, PopulationState, size

__all__ = [
    "DISTILL_DEFAULTS",
    "EXECUTIONS",
    "HYPERPARAMETERS",
    "OPTIMIZER_HYPERPARAMETERS",
    "SCHEDULE_HYPERPARAMETERS",
    "TRANSFORM_HYPERPARAMETERS",
    "Population",
    "PopulationState",
    "exploit",
    "fitness",
    "init",
    "member",
    "replace_diverged",
    "shard",
    "size",
    "stack",
    "train_pbt",
]


def stack(members: Sequence) -> Any:
    """A population from a list of pytrees of the same structure and shapes.

    Args:
      members: one pytree per member, at least one.

    Returns:
      The pytree with every leaf stacked on a new leading axis ``P``.

    Examples:
      >>> import jax.numpy as jnp
      >>> stack([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])["w"].shape
      (2, 3)
    """
    if len(members) < 1:
        raise ValueError("stack: population size must be >= 1, got no members")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)


def member(population, i: int) -> Any:
    """Member ``i`` as an ordinary pytree.

    Args:
      population: a population (leading member axis ``P``).
      i: the member, negative counting from the end.

    Returns:
      The member's pytree, without the member axis.

    Examples:
      >>> import jax.numpy as jnp
      >>> member({"w": jnp.arange(6.0).reshape(3, 2)}, -1)["w"].tolist()
      [4.0, 5.0]
    """
    p = size(population)
    i = check_int("member", "i", i, minimum=-p, maximum=p - 1)
    return jax.tree.map(lambda leaf: leaf[i], population)


def init(make_params: Callable[[jax.Array], Any], key: jax.Array, population_size: int) -> Any:
    """``population_size`` members from ``make_params(key)``, one key each, in one vmapped call.

    Args:
      make_params: ``make_params(key) -> params`` of one member.
      key: a PRNG key, split over the members.
      population_size: ``P``, an integer >= 1.

    Returns:
      The population.

    Examples:
      >>> import jax
      >>> init(lambda k: {"w": jax.random.normal(k, (3,))}, jax.random.key(0), 4)["w"].shape
      (4, 3)
    """
    population_size = check_int("init", "population_size", population_size, minimum=1)
    return jax.vmap(make_params)(jax.random.split(key, population_size))


def shard(population, devices: Sequence | None = None) -> Any:
    """Put the member axis of ``population`` on a one-axis mesh of ``devices`` (default: all devices).

    ``P`` must be a multiple of the device count. Data stays replicated:
    pass batches as they are; each device trains its own members.

    Args:
      population: a population (leading member axis ``P``).
      devices: the devices of the mesh; default ``jax.devices()``.

    Returns:
      The population, placed with ``NamedSharding(mesh, PartitionSpec("members"))``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> placed = shard({"w": jnp.zeros((len(jax.devices()) * 2, 3))})
      >>> placed["w"].sharding.spec == jax.sharding.PartitionSpec("members")
      True
    """
    devices = list(jax.devices() if devices is None else devices)
    p = size(population)
    if p % len(devices):
        raise ValueError(f"shard: population size {p} is not a multiple of the {len(devices)} devices")
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    return jax.device_put(population, spec)


def fitness(params, scores: jax.Array) -> jax.Array:
    """``scores`` (P,) with ``-inf`` for every member whose score or params hold NaN or inf."""
    finite = jnp.isfinite(scores)
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            finite &= jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
    return jnp.where(finite, scores, -jnp.inf)


def replace_diverged(
    key: jax.Array, state: PopulationState, member_fitness: jax.Array
) -> tuple[PopulationState, jax.Array]:
    """Members with fitness ``-inf`` (or NaN) take a copy of a random healthy member (params, optimizer, hyperparameters).

    Returns:
      ``(state, source)``: ``source[i]`` is the member ``i`` now copies (``i`` itself if it was healthy).

    Raises:
      ValueError: no member is healthy.
    """
    member_fitness = jnp.asarray(member_fitness)
    p = size(state.params)
    if member_fitness.shape != (p,):
        raise ValueError(f"replace_diverged: fitness must have shape ({p},), got {member_fitness.shape}")
    if not np.isfinite(np.asarray(member_fitness)).any():
        raise ValueError("replace_diverged: every member diverged (no finite fitness); nothing to copy")
    (params, opt_state), hparams, source = evolution.replace_nonfinite(
        key, member_fitness, (state.params, state.opt_state), state.hparams
    )
    return PopulationState(params, opt_state, hparams, state.count), source


# Where a perturbed hyperparameter is clipped back to (bits are also rounded).
_PBT_BOUNDS = {"sparsity": (0.0, 0.99), "bits": (MIN_BITS, MAX_BITS), "alpha": (0.0, 1.0)}


def exploit(
    key: jax.Array,
    state: PopulationState,
    member_fitness: jax.Array,
    *,
    perturb: Sequence[str] | None = None,
    fraction: float = 0.25,
    factors: Sequence[float] = (0.8, 1.2),
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[PopulationState, jax.Array]:
    """One population-based-training step on a :class:`PopulationState`.

    The worst ``fraction`` of the members copy a member drawn among the best
    as a whole (params, optimizer state and every hyperparameter), then the
    hyperparameters named in ``perturb`` are multiplied by a factor drawn
    from ``factors`` (:func:`hamjax.search.evolution.exploit_explore`) and
    clipped into ``bounds``; ``bits`` are rounded to integers, ``sparsity``
    and ``alpha`` kept in range.

    Args:
      key: a PRNG key.
      state: the population.
      member_fitness: ``(P,)`` scores, higher is better (``-inf`` for diverged members).
      perturb: hyperparameter names to perturb; default every one the state carries.
      fraction, factors: as in :func:`hamjax.search.evolution.exploit_explore`.
      bounds: ``name -> (low, high)``, on top of the built-in ranges.

    Returns:
      ``(state, source)``: ``source[i]`` is the member ``i`` copied (itself if kept).

    Raises:
      ValueError: unknown names in ``perturb``, or fitness of the wrong shape.
    """
    perturb = tuple(state.hparams) if perturb is None else tuple(perturb)
    unknown = sorted(set(perturb) - set(state.hparams))
    if unknown:
        raise ValueError(f"exploit: cannot perturb {unknown}; the state carries {sorted(state.hparams)}")
    member_fitness = jnp.asarray(member_fitness)
    p = size(state.params)
    if member_fitness.shape != (p,):
        raise ValueError(f"exploit: fitness must have shape ({p},), got {member_fitness.shape}")
    bounds = {**{k: v for k, v in _PBT_BOUNDS.items() if k in perturb}, **dict(bounds or {})}
    fixed = {k: v for k, v in state.hparams.items() if k not in perturb}
    moving = {k: state.hparams[k] for k in perturb}
    (params, opt_state, fixed), moving, source = evolution.exploit_explore(
        key,
        member_fitness,
        (state.params, state.opt_state, fixed),
        moving,
        fraction=fraction,
        factors=factors,
        bounds=bounds,
    )
    if "bits" in moving:
        moving["bits"] = jnp.round(moving["bits"])
    hparams = {k: (moving[k] if k in moving else fixed[k]) for k in state.hparams}
    return PopulationState(params, opt_state, hparams, state.count), source


def train_pbt(
    trainer: Population,
    state: PopulationState,
    key: jax.Array,
    rounds: Iterable[tuple[Any, Any]],
    eval_data: tuple[Any, Any],
    *,
    perturb: Sequence[str] | None = None,
    fraction: float = 0.25,
    factors: Sequence[float] = (0.8, 1.2),
    bounds: Mapping[str, tuple[float, float]] | None = None,
    on_round: Callable[[int, dict], None] | None = None,
) -> tuple[PopulationState, list[dict]]:
    """Population-based training: train, score, exploit and explore, round after round.

    Each element of ``rounds`` is one round's ``(xs, ys)`` of shape
    ``(steps, batch, ...)``: every member trains on it in one call of
    :meth:`Population.train`, is scored by accuracy on ``eval_data``
    (:func:`fitness`: ``-inf`` when diverged), diverged members are replaced
    (:func:`replace_diverged`), and :func:`exploit` restarts the worst from
    perturbed copies of the best. No exploit follows the last round, so the
    returned members are the trained ones that were scored.

    Args:
      trainer: the :class:`Population` that trains.
      state: the starting population (donated to the first call).
      key: a PRNG key (split once per round).
      rounds: an iterable of ``(xs, ys)``.
      eval_data: ``(x, y)`` that scores every member.
      perturb, fraction, factors, bounds: as in :func:`exploit`.
      on_round: called with ``(round, record)`` after every round.

    Returns:
      ``(state, history)``; ``history[r]`` has ``"accuracy"`` (P,) after
      training in round ``r``, ``"hparams"`` the hyperparameters it trained
      with, ``"loss"`` the members' mean training loss and ``"source"`` (P,)
      whom each member copied afterwards (``None`` after the last round).

    Raises:
      ValueError: no rounds, or every member diverged.
    """
    history: list[dict] = []
    batches = iter(rounds)
    current = next(batches, None)
    if current is None:
        raise ValueError("train_pbt: rounds is empty; give at least one (xs, ys) round")
    x_eval, y_eval = eval_data
    r = 0
    while current is not None:
        hparams = {k: np.asarray(v).tolist() for k, v in state.hparams.items()}
        state, losses = trainer.train(state, *current)
        accuracy = trainer.evaluate(state, x_eval, y_eval)["accuracy"]
        scores = fitness(state.params, accuracy)
        record = {
            "round": r,
            "accuracy": np.asarray(scores).tolist(),
            "loss": np.asarray(jnp.mean(losses, axis=1)).tolist(),
            "hparams": hparams,
            "source": None,
        }
        current = next(batches, None)
        if current is not None:
            key, k_replace, k_exploit = jax.random.split(key, 3)
            state, replaced = replace_diverged(k_replace, state, scores)
            scores = scores[replaced]  # a replaced member now holds its source's weights and score
            state, source = exploit(
                k_exploit, state, scores, perturb=perturb, fraction=fraction, factors=factors, bounds=bounds
            )
            record["source"] = np.asarray(replaced[source]).tolist()
        history.append(record)
        if on_round is not None:
            on_round(r, record)
        r += 1
    return state, history
