"""Populations: many models trained in one compiled call, one member per slice of a leading axis.

A population is any pytree whose leaves carry a leading member axis ``P``
(:func:`stack`, :func:`member`). :class:`Population` trains and evaluates
every member with one jitted function: the per-member step is mapped over
the member axis, and ``steps`` optimizer steps run per call under
``lax.scan`` so that dispatch is paid once per call, not once per step.

Per-member hyperparameters are ``(P,)`` arrays (:data:`HYPERPARAMETERS`),
so a population can hold 32 learning rates, sparsities or bit widths in one
compiled step:

* ``learning_rate``, ``weight_decay``: AdamW's, written into each member's
  own ``optax.inject_hyperparams`` state before every update;
* ``sparsity``: after every update the member's weights are pruned to that
  fraction by magnitude, per layer (:func:`hamjax.prune.magnitude_masks`),
  so its params always hold exactly that sparsity (projected gradient
  descent onto the sparsity constraint);
* ``bits``: quantization-aware training: the forward pass sees the weights
  fake-quantized per output channel at that width
  (:func:`hamjax.quant.fake_quant_weights`, straight-through gradients)
  while the float weights are updated, and :meth:`Population.evaluate`
  scores the quantized model;
* ``temperature``, ``alpha``: distillation from ``Population(teacher=...)``:
  the loss is ``alpha * soft_target_loss(T) + (1 - alpha) * loss_fn``
  (:func:`hamjax.distill.soft_target_loss`), the teacher's logits computed
  once per batch for all members.

Pruning and quantization touch the leaves :func:`hamjax.prune.default_filter`
selects (weight matrices and kernels, not biases, norms or batch statistics).

Population-based training (:func:`exploit`, :func:`train_pbt`): every round
trains all members, scores them, and the worst restart from copies of the
best (weights, optimizer state, hyperparameters) with perturbed
hyperparameters.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import distill, prune
from hamjax._base import call_model
from hamjax.quant import MAX_BITS, MIN_BITS, fake_quant_weights
from hamjax.search import evolution
from hamjax.train import cross_entropy

EXECUTIONS = ("auto", "vmap", "chunked", "sequential")
OPTIMIZER_HYPERPARAMETERS = ("learning_rate", "weight_decay")
TRANSFORM_HYPERPARAMETERS = ("sparsity", "bits", "temperature", "alpha")
HYPERPARAMETERS = OPTIMIZER_HYPERPARAMETERS + TRANSFORM_HYPERPARAMETERS
DISTILL_DEFAULTS = {"temperature": 4.0, "alpha": 0.9}

# name -> (check of a concrete value, what the error says it must be)
_RANGES = {
    "learning_rate": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "sparsity": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    "bits": (
        lambda v: (v >= MIN_BITS) & (v <= MAX_BITS) & (v == np.round(v)),
        f"an integer in [{MIN_BITS}, {MAX_BITS}]",
    ),
    "temperature": (lambda v: v > 0, "> 0"),
    "alpha": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
}


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
        if not isinstance(arr, jax.core.Tracer):
            check, what = _RANGES[name]
            v = np.asarray(arr)
            if not bool(np.all(np.isfinite(v) & check(v))):
                raise ValueError(f"Population: hyperparameter {name} must be finite and {what}, got {v}")
        out[name] = arr
    return out


def _selected(params) -> Any:
    """A tree of bools: the leaves pruning and quantization touch (:func:`hamjax.prune.default_filter`)."""
    return jax.tree_util.tree_map_with_path(prune.default_filter, params)


@dataclasses.dataclass
class Population:
    """Trains and evaluates a whole population in one compiled call.

    Args:
      apply_fn: the apply function shared by every member (any kind of the
        contract; :class:`hamjax.ApplyFn` members train in train mode).
      loss_fn: ``loss_fn(logits, labels) -> scalar``.
      execution: one of :data:`EXECUTIONS`.
      chunk: members per ``lax.map`` step for ``"chunked"``.
      teacher: ``(teacher_apply_fn, teacher_params)`` to distill from, or
        ``None``. With a teacher every member's state carries
        ``temperature`` and ``alpha`` (defaults :data:`DISTILL_DEFAULTS`).

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from hamjax.search import population as pop
      >>> f = lambda p, x: x @ p["w"]
      >>> params = pop.init(lambda k: {"w": 0.1 * jax.random.normal(k, (4, 3))}, jax.random.key(0), 8)
      >>> trainer = pop.Population(f)
      >>> state = trainer.init(params, {"learning_rate": jnp.logspace(-3, -1, 8), "sparsity": 0.5})
      >>> xs, ys = np.ones((5, 16, 4), np.float32), np.zeros((5, 16), np.int32)
      >>> state, losses = trainer.train(state, xs, ys)
      >>> losses.shape, float((state.params["w"] == 0).mean())
      ((8, 5), 0.5)
    """

    apply_fn: Any
    loss_fn: Callable = cross_entropy
    execution: str = "vmap"
    chunk: int = 8
    teacher: tuple | None = None
    chosen: str | None = None
    timings: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.execution not in EXECUTIONS:
            raise ValueError(f"Population: execution must be one of {EXECUTIONS}, got {self.execution!r}")
        if self.chunk < 1:
            raise ValueError(f"Population: chunk must be >= 1, got {self.chunk}")
        if self.teacher is not None and (not isinstance(self.teacher, tuple | list) or len(self.teacher) != 2):
            raise ValueError("Population: teacher must be a (teacher_apply_fn, teacher_params) pair")
        self._optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
        self._compiled: dict = {}

    # one member -------------------------------------------------------------------------------
    def _forward_params(self, params, hparams):
        """The params the forward pass sees: fake-quantized weights when the member has ``bits``."""
        if "bits" not in hparams:
            return params
        transform = fake_quant_weights(jnp.round(hparams["bits"]), filter=prune.default_filter)
        quantized, _ = transform.apply(params, transform.init(params))
        return quantized

    def _loss(self, logits, y, teacher_logits, hparams):
        loss = self.loss_fn(logits, y)
        if teacher_logits is None:
            return loss
        alpha = hparams["alpha"]
        soft = distill.soft_target_loss(logits, teacher_logits, temperature=hparams["temperature"])
        return alpha * soft + (1.0 - alpha) * loss

    def _member_step(self, params, opt_state, hparams, x, y, teacher_logits):
        def loss(p):
            logits, new_p = call_model(self.apply_fn, self._forward_params(p, hparams), x, train=True)
            return self._loss(logits, y, teacher_logits, hparams), new_p

        (value, new_params), grads = jax.value_and_grad(loss, has_aux=True)(params)
        if "bits" in hparams:  # keep the float weights; take only new collections (batch statistics)
            new_params = jax.tree.map(lambda keep, p, n: p if keep else n, _selected(params), params, new_params)
        hyper = dict(opt_state.hyperparams)
        hyper.update({k: hparams[k].astype(hyper[k].dtype) for k in OPTIMIZER_HYPERPARAMETERS if k in hparams})
        opt_state = opt_state._replace(hyperparams=hyper)
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(new_params, updates)
        if "sparsity" in hparams:
            params = prune.apply_masks(params, prune.magnitude_masks(params, hparams["sparsity"]))
        return params, opt_state, value

    def _member_train(self, params, opt_state, hparams, xs, ys, teacher_logits):
        def body(carry, batch):
            p, s = carry
            p, s, value = self._member_step(p, s, hparams, *batch)
            return (p, s), value

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys, teacher_logits))
        return params, opt_state, losses

    def _member_eval(self, params, hparams, x, y):
        logits, _ = call_model(self.apply_fn, self._forward_params(params, hparams), x)
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
                teacher_logits = None
                if self.teacher is not None:
                    teacher_apply, teacher_params = self.teacher
                    teacher_logits = jax.lax.map(lambda x: call_model(teacher_apply, teacher_params, x)[0], xs)
                    teacher_logits = jax.lax.stop_gradient(teacher_logits)
                shared = (xs, ys, teacher_logits)
                params, opt_state, losses = self._over_members(self._member_train, execution, members, shared)
                return PopulationState(params, opt_state, state.hparams, state.step + xs.shape[0]), losses

            self._compiled[execution] = jax.jit(run, donate_argnums=0)
        return self._compiled[execution]

    # public ---------------------------------------------------------------------------------
    def init(self, params, hparams: Mapping | None = None) -> PopulationState:
        """The starting state: ``params`` (a population), fresh optimizer states, ``hparams`` per member."""
        p = size(params)
        hp = _check_hparams(dict(hparams or {}), p)
        distilling = sorted(set(hp) & set(DISTILL_DEFAULTS))
        if distilling and self.teacher is None:
            raise ValueError(f"Population: hyperparameters {distilling} need Population(teacher=(apply_fn, params))")
        opt_state = jax.vmap(self._optimizer.init)(params)
        defaults = {k: jnp.broadcast_to(v, (p,)) for k, v in opt_state.hyperparams.items() if k in HYPERPARAMETERS}
        if self.teacher is not None:
            defaults.update({k: jnp.full((p,), v, jnp.float32) for k, v in DISTILL_DEFAULTS.items()})
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
        """Per-member ``{"loss": (P,), "accuracy": (P,)}`` on one batch (eval mode).

        Given a :class:`PopulationState` whose members have ``bits``, each
        member is scored with its weights fake-quantized at its own width;
        bare params are scored as they are. The loss is ``loss_fn`` alone.
        """
        if isinstance(state_or_params, PopulationState):
            params, hparams = state_or_params.params, {k: v for k, v in state_or_params.hparams.items() if k == "bits"}
        else:
            params, hparams = state_or_params, {}
        if "eval" not in self._compiled:
            self._compiled["eval"] = jax.jit(jax.vmap(self._member_eval, in_axes=(0, 0, None, None)))
        return self._compiled["eval"](params, hparams, jnp.asarray(x), jnp.asarray(y))


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
    return PopulationState(params, opt_state, hparams, state.step), source


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
