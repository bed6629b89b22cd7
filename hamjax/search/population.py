"""Populations: many models trained in one compiled call, one member per slice of a leading axis.

A population is any pytree whose leaves carry a leading member axis ``P``
(:func:`stack`, :func:`member`). :class:`Population` trains and evaluates
every member with one jitted function: the per-member step is mapped over
the member axis, and ``steps`` optimizer steps run per call under
``lax.scan`` so that dispatch is paid once per call, not once per step.

Per-member hyperparameters are arrays (``{"learning_rate": (P,),
"weight_decay": (P,)}``): the optimizer is built with
``optax.inject_hyperparams`` and each member's values are written into its
own optimizer state before every update, so a population can hold 32
learning rates in one compiled step.

How the member axis executes is a choice (:data:`EXECUTIONS`), because on
XLA:CPU a plain ``vmap`` over compute-bound members can lose to a loop:

* ``"vmap"``: every member in one batched program;
* ``"chunked"``: ``lax.map(..., batch_size=chunk)``, ``chunk`` members at a time;
* ``"sequential"``: ``lax.map`` one member at a time (a compiled loop);
* ``"auto"``: :meth:`Population.choose` times the candidates on the real
  shapes and keeps the fastest.

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

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax._base import call_model
from hamjax.search import evolution
from hamjax.train import cross_entropy

EXECUTIONS = ("auto", "vmap", "chunked", "sequential")
HYPERPARAMETERS = ("learning_rate", "weight_decay")


def size(population) -> int:
    """The member count ``P`` of a population (the leading axis of its leaves)."""
    leaves = jax.tree.leaves(population)
    if not leaves:
        raise ValueError("population: no array leaves")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"population: every leaf needs the same leading member axis, got sizes {sorted(map(str, sizes))}"
        )
    return int(sizes.pop())


def stack(members: Sequence) -> Any:
    """A population from a list of pytrees of the same structure and shapes."""
    if len(members) < 1:
        raise ValueError("stack: population size must be >= 1, got no members")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)


def member(population, i: int) -> Any:
    """Member ``i`` as an ordinary pytree."""
    p = size(population)
    if not -p <= i < p:
        raise ValueError(f"member: index {i} out of range for a population of {p}")
    return jax.tree.map(lambda leaf: leaf[i], population)


def init(make_params: Callable[[jax.Array], Any], key: jax.Array, population_size: int) -> Any:
    """``population_size`` members from ``make_params(key)``, one key each, in one vmapped call."""
    if population_size < 1:
        raise ValueError(f"init: population size must be >= 1, got {population_size}")
    return jax.vmap(make_params)(jax.random.split(key, population_size))


def shard(population, devices: Sequence | None = None) -> Any:
    """Put the member axis of ``population`` on a one-axis mesh of ``devices`` (default: all devices).

    ``P`` must be a multiple of the device count. Data stays replicated:
    pass batches as they are; each device trains its own members.
    """
    devices = list(jax.devices() if devices is None else devices)
    p = size(population)
    if p % len(devices):
        raise ValueError(f"shard: population size {p} is not a multiple of the {len(devices)} devices")
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    return jax.device_put(population, spec)


class PopulationState(NamedTuple):
    """What a population carries between calls: member params, optimizer states, hyperparameters, step."""

    params: Any
    opt_state: Any
    hparams: dict
    step: jax.Array


def _check_hparams(hparams: Mapping, p: int) -> dict:
    unknown = sorted(set(hparams) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"Population: unknown hyperparameters {unknown}; expected among {HYPERPARAMETERS}")
    out = {}
    for name, value in hparams.items():
        arr = jnp.asarray(value, jnp.float32)
        if arr.ndim == 0:
            arr = jnp.full((p,), arr)
        if arr.shape != (p,):
            raise ValueError(f"Population: hyperparameter {name} must have shape ({p},), got {arr.shape}")
        if not isinstance(arr, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(arr) & (arr >= 0))):
            raise ValueError(f"Population: hyperparameter {name} must be finite and >= 0, got {np.asarray(arr)}")
        out[name] = arr
    return out


@dataclasses.dataclass
class Population:
    """Trains and evaluates a whole population in one compiled call.

    Args:
      apply_fn: the apply function shared by every member (any kind of the
        contract; :class:`hamjax.ApplyFn` members train in train mode).
      loss_fn: ``loss_fn(logits, labels) -> scalar``.
      execution: one of :data:`EXECUTIONS`.
      chunk: members per ``lax.map`` step for ``"chunked"``.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from hamjax.search import population as pop
      >>> f = lambda p, x: x @ p["w"]
      >>> params = pop.init(lambda k: {"w": 0.1 * jax.random.normal(k, (4, 3))}, jax.random.key(0), 8)
      >>> trainer = pop.Population(f)
      >>> state = trainer.init(params, {"learning_rate": jnp.logspace(-3, -1, 8)})
      >>> xs, ys = np.ones((5, 16, 4), np.float32), np.zeros((5, 16), np.int32)
      >>> state, losses = trainer.train(state, xs, ys)
      >>> losses.shape
      (8, 5)
    """

    apply_fn: Any
    loss_fn: Callable = cross_entropy
    execution: str = "vmap"
    chunk: int = 8
    chosen: str | None = None
    timings: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.execution not in EXECUTIONS:
            raise ValueError(f"Population: execution must be one of {EXECUTIONS}, got {self.execution!r}")
        if self.chunk < 1:
            raise ValueError(f"Population: chunk must be >= 1, got {self.chunk}")
        self._optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
        self._compiled: dict = {}

    # one member -------------------------------------------------------------------------------
    def _member_step(self, params, opt_state, hparams, x, y):
        def loss(p):
            logits, new_p = call_model(self.apply_fn, p, x, train=True)
            return self.loss_fn(logits, y), new_p

        (value, new_params), grads = jax.value_and_grad(loss, has_aux=True)(params)
        hyper = dict(opt_state.hyperparams)
        hyper.update({k: v.astype(hyper[k].dtype) for k, v in hparams.items()})
        opt_state = opt_state._replace(hyperparams=hyper)
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(new_params, updates)
        return params, opt_state, value

    def _member_train(self, params, opt_state, hparams, xs, ys):
        def body(carry, batch):
            p, s = carry
            p, s, value = self._member_step(p, s, hparams, *batch)
            return (p, s), value

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys))
        return params, opt_state, losses

    def _member_eval(self, params, x, y):
        logits, _ = call_model(self.apply_fn, params, x)
        ok = jnp.all(jnp.isfinite(logits))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return {"loss": self.loss_fn(logits, y), "accuracy": jnp.where(ok, accuracy, 0.0)}

    # the member axis -------------------------------------------------------------------------
    def _over_members(self, fn, execution: str, members, shared):
        if execution == "vmap":
            return jax.vmap(lambda m: fn(*m, *shared))(members)
        batch = self.chunk if execution == "chunked" else None
        return jax.lax.map(lambda m: fn(*m, *shared), members, batch_size=batch)

    def _train_fn(self, execution: str):
        if execution not in self._compiled:

            def run(state: PopulationState, xs, ys):
                members = (state.params, state.opt_state, state.hparams)
                params, opt_state, losses = self._over_members(self._member_train, execution, members, (xs, ys))
                return PopulationState(params, opt_state, state.hparams, state.step + xs.shape[0]), losses

            self._compiled[execution] = jax.jit(run, donate_argnums=0)
        return self._compiled[execution]

    # public ---------------------------------------------------------------------------------
    def init(self, params, hparams: Mapping | None = None) -> PopulationState:
        """The starting state: ``params`` (a population), fresh optimizer states, ``hparams`` per member."""
        p = size(params)
        hp = _check_hparams(dict(hparams or {}), p)
        opt_state = jax.vmap(self._optimizer.init)(params)
        defaults = {k: jnp.broadcast_to(v, (p,)) for k, v in opt_state.hyperparams.items() if k in HYPERPARAMETERS}
        state = PopulationState(params, opt_state, {**defaults, **hp}, jnp.zeros((), jnp.int32))
        # Fresh buffers throughout: the train step donates its state, the caller keeps its params,
        # and no two leaves may share a buffer.
        return jax.tree.map(lambda a: jnp.array(a, copy=True), state)

    def train(self, state: PopulationState, xs, ys) -> tuple[PopulationState, jax.Array]:
        """``xs.shape[0]`` optimizer steps for every member in one call.

        Args:
          state: from :meth:`init` or a previous call (donated: use the returned one).
          xs, ys: ``(steps, batch, ...)`` inputs and labels, the same batches for every member.

        Returns:
          ``(state, losses)`` with ``losses`` of shape ``(P, steps)``.
        """
        xs, ys = jnp.asarray(xs), jnp.asarray(ys)
        if xs.ndim < 2 or ys.shape[:2] != xs.shape[:2]:
            raise ValueError(
                f"Population.train: xs (steps, batch, ...) and ys (steps, batch) disagree: {xs.shape}, {ys.shape}"
            )
        execution = self.execution
        if execution == "auto":
            execution = self.chosen or self.choose(state, xs, ys)
        return self._train_fn(execution)(state, xs, ys)

    def choose(self, state: PopulationState, xs, ys, *, repeats: int = 3) -> str:
        """Time every execution on these shapes (after compiling) and keep the fastest for ``"auto"``.

        Runs on copies, so ``state`` is untouched; the timings (median seconds
        per call) are kept in :attr:`timings`.
        """
        for execution in EXECUTIONS[1:]:
            fn = self._train_fn(execution)
            copy = jax.tree.map(jnp.array, state)
            copy, _ = fn(copy, xs, ys)
            jax.block_until_ready(copy)
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                copy, _ = fn(copy, xs, ys)
                jax.block_until_ready(copy)
                seconds.append(time.perf_counter() - started)
            self.timings[execution] = float(np.median(seconds))
        self.chosen = min(self.timings, key=self.timings.get)
        return self.chosen

    def evaluate(self, state_or_params, x, y) -> dict:
        """Per-member ``{"loss": (P,), "accuracy": (P,)}`` on one batch (eval mode)."""
        params = state_or_params.params if isinstance(state_or_params, PopulationState) else state_or_params
        if "eval" not in self._compiled:
            self._compiled["eval"] = jax.jit(jax.vmap(self._member_eval, in_axes=(0, None, None)))
        return self._compiled["eval"](params, jnp.asarray(x), jnp.asarray(y))


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
    return PopulationState(params, opt_state, hparams, state.step), source
