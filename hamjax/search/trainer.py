"""The population trainer: :class:`Population` trains and evaluates every member in one compiled call.

The per-member step is mapped over the member axis, and ``steps`` optimizer
steps run per call under ``lax.scan``, so dispatch is paid once per call, not
once per step.
:meth:`Population.train_epochs` runs several epochs per call, each scored on
validation rows inside the same call.

Per-member hyperparameters are ``(P,)`` arrays (:data:`hamjax.search.member_hparams.HYPERPARAMETERS`),
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
  once per batch for all members;
* ``augment``: the RandAugment magnitude in [0, 1] of each member's
  training batches (:func:`hamjax.augment.randaugment`, two ops per
  example); every member draws the same ops and offsets at a step (keys
  folded from the step count), so members differ by magnitude alone;
* ``label_smoothing``: in [0, 1), each member's targets smoothed by that
  much (``loss_fn`` then receives probability rows, which the default
  cross-entropy takes);
* ``warmup_steps``, ``decay_steps``: the member's learning rate scaled at
  its own step ``t`` by a linear warm-up ``min(1, (t + 1) / warmup_steps)``
  and a cosine decay to 0 ending at step ``decay_steps`` (0 turns either
  off; :func:`hamjax.search.member_hparams.learning_rate_scale`);
* ``mixup``: each member's batch mixed with ``lam ~ Beta(a, a)`` per example
  (:func:`hamjax.augment.mixup`; 0 is off), targets as probability rows.

Pruning and quantization touch the leaves the model uses as dense or
convolution weights (:func:`hamjax.jaxpr.weight_filter`, decided by use in
its jaxpr: not biases, norms, batch statistics, nor tables that are added
or gathered, whatever their names).

How the member axis executes is a choice (:data:`EXECUTIONS`), because on
XLA:CPU a plain ``vmap`` over compute-bound members can lose to a loop:

* ``"vmap"``: every member in one batched program;
* ``"chunked"``: ``lax.map(..., batch_size=chunk)``, ``chunk`` members at a time;
* ``"sequential"``: ``lax.map`` one member at a time (a compiled loop);
* ``"auto"``: :meth:`Population.choose` times the candidates on the real
  shapes and keeps the fastest.

Everything here is re-exported by :mod:`hamjax.search.population`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import augment, distill, jaxpr, prune
from hamjax._base import call_model, optax_update
from hamjax._checks import check_choice, check_finite, check_int, is_traced
from hamjax._losses import cross_entropy
from hamjax.data.checks import check_labels
from hamjax.quant import fake_quant_weights
from hamjax.search.member_hparams import (
    HYPERPARAMETERS,
    OPTIMIZER_HYPERPARAMETERS,
    SCHEDULE_HYPERPARAMETERS,
    check_hparams,
    learning_rate_scale,
    mix,
)
from hamjax.train_steps import logit_count

EXECUTIONS = ("auto", "vmap", "chunked", "sequential")
DISTILL_DEFAULTS = {"temperature": 4.0, "alpha": 0.9}


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


class PopulationState(NamedTuple):
    """What a population carries between calls: member params, optimizer states, hyperparameters, step count.

    Attributes:
      params: the members' params, leading axis ``P``.
      opt_state: their optimizer states, leading axis ``P``.
      hparams: ``name -> (P,)`` float32 hyperparameters.
      count: int32 scalar, the optimizer steps every member has taken.

    Examples:
      >>> import jax.numpy as jnp
      >>> trainer = Population(lambda p, x: x @ p["w"])
      >>> state = trainer.init({"w": jnp.zeros((4, 3, 2))})
      >>> int(state.count), sorted(state.hparams)
      (0, ['learning_rate', 'weight_decay'])
    """

    params: Any
    opt_state: Any
    hparams: dict
    count: jax.Array


_OPTIMIZER = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)


@jax.jit
def _fresh_state(params, hparams: dict) -> PopulationState:
    """Fresh optimizer states and defaults, in new buffers (the train step donates its state): one program per shape."""
    opt_state = jax.vmap(_OPTIMIZER.init)(params)
    p = size(params)
    defaults = {k: jnp.broadcast_to(v, (p,)) for k, v in opt_state.hyperparams.items() if k in HYPERPARAMETERS}
    state = PopulationState(params, opt_state, {**defaults, **hparams}, jnp.zeros((), jnp.int32))
    return jax.tree.map(lambda a: jnp.array(a, copy=True), state)


def _selected(params, keep) -> Any:
    """A tree of bools: the leaves pruning and quantization touch (``keep``, from :meth:`Population._weights`)."""
    return jax.tree_util.tree_map_with_path(keep, params)


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
        check_choice("Population", "execution", self.execution, EXECUTIONS)
        self.chunk = check_int("Population", "chunk", self.chunk, minimum=1)
        if self.teacher is not None and (not isinstance(self.teacher, tuple | list) or len(self.teacher) != 2):
            raise ValueError("Population: teacher must be a (teacher_apply_fn, teacher_params) pair")
        self._optimizer = _OPTIMIZER
        self._compiled: dict = {}
        self._filters: dict = {}

    # one member -------------------------------------------------------------------------------
    def _weights(self, params, x) -> jaxpr.WeightFilter:
        """The leaves pruning and quantization touch: the model's dense and conv weights, found by use, once per shape."""
        key = (jax.tree.structure(params), *((jnp.shape(a), jnp.result_type(a)) for a in jax.tree.leaves((params, x))))
        if key not in self._filters:
            self._filters[key] = jaxpr.weight_filter(self.apply_fn, params, x)
        return self._filters[key]

    def _forward_params(self, params, hparams, keep):
        """The params the forward pass sees: fake-quantized weights when the member has ``bits``."""
        if "bits" not in hparams:
            return params
        transform = fake_quant_weights(jnp.round(hparams["bits"]), filter=keep)
        quantized, _ = transform.apply(params, transform.init(params))
        return quantized

    @staticmethod
    def _targets(y, classes: int, hparams):
        """Integer labels as they are, or probability rows smoothed by the member's ``label_smoothing``."""
        if "label_smoothing" not in hparams and "mixup" not in hparams:
            return y
        return optax.smooth_labels(jax.nn.one_hot(y, classes, dtype=jnp.float32), hparams.get("label_smoothing", 0.0))

    def _loss(self, logits, y, teacher_logits, hparams):
        if y.ndim < logits.ndim:  # labels, not rows mixed in the step
            y = self._targets(y, logits.shape[-1], hparams)
        loss = self.loss_fn(logits, y)
        if teacher_logits is None:
            return loss
        alpha = hparams["alpha"]
        soft = distill.soft_target_loss(logits, teacher_logits, temperature=hparams["temperature"])
        return alpha * soft + (1.0 - alpha) * loss

    def _member_step(self, params, opt_state, hparams, x, y, teacher_logits, key):
        if "augment" in hparams:
            x = augment.randaugment(key, x, hparams["augment"])
        if "mixup" in hparams:  # rows as wide as the logits, known from the model's abstract output
            classes = jax.eval_shape(lambda p: call_model(self.apply_fn, p, x, train=True)[0], params).shape[-1]
            x, y = mix(jax.random.fold_in(key, 1), x, self._targets(y, classes, hparams), hparams["mixup"])
        keep = self._weights(params, x) if {"bits", "sparsity"} & set(hparams) else None

        def loss(p):
            logits, new_p = call_model(self.apply_fn, self._forward_params(p, hparams, keep), x, train=True)
            return self._loss(logits, y, teacher_logits, hparams), new_p

        (value, new_params), grads = jax.value_and_grad(loss, has_aux=True)(params)
        if "bits" in hparams:  # keep the float weights; take only new collections (batch statistics)
            new_params = jax.tree.map(lambda sel, p, n: p if sel else n, _selected(params, keep), params, new_params)
        hyper = dict(opt_state.hyperparams)
        hyper.update({k: hparams[k].astype(hyper[k].dtype) for k in OPTIMIZER_HYPERPARAMETERS if k in hparams})
        if set(SCHEDULE_HYPERPARAMETERS) & set(hparams):  # the member's own step count: slots refill at any step
            scale = learning_rate_scale(opt_state.count, hparams)
            hyper["learning_rate"] = (hparams["learning_rate"] * scale).astype(hyper["learning_rate"].dtype)
        opt_state = opt_state._replace(hyperparams=hyper)
        updates, opt_state = optax_update(self._optimizer, grads, opt_state, params)
        params = optax.apply_updates(new_params, updates)
        if "sparsity" in hparams:
            params = prune.apply_masks(params, prune.magnitude_masks(params, hparams["sparsity"], filter=keep))
        return params, opt_state, value

    def _member_train(self, params, opt_state, hparams, xs, ys, teacher_logits, keys):
        def body(carry, batch):
            p, s = carry
            p, s, value = self._member_step(p, s, hparams, *batch)
            return (p, s), value

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys, teacher_logits, keys))
        return params, opt_state, losses

    def _member_eval(self, params, hparams, x, y):
        logits, _ = call_model(
            self.apply_fn,
            self._forward_params(params, hparams, self._weights(params, x) if "bits" in hparams else None),
            x,
        )
        ok = jnp.all(jnp.isfinite(logits))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return {"loss": self.loss_fn(logits, y), "accuracy": jnp.where(ok, accuracy, 0.0)}

    # the member axis -------------------------------------------------------------------------
    def _over_members(self, fn, execution: str, members, shared):
        if execution == "vmap":
            return jax.vmap(lambda m: fn(*m, *shared))(members)
        batch = self.chunk if execution == "chunked" else None
        return jax.lax.map(lambda m: fn(*m, *shared), members, batch_size=batch)

    def _train_body(self, execution: str):
        def run(state: PopulationState, xs, ys):
            members = (state.params, state.opt_state, state.hparams)
            teacher_logits = None
            if self.teacher is not None:
                teacher_apply, teacher_params = self.teacher
                teacher_logits = jax.lax.map(lambda x: call_model(teacher_apply, teacher_params, x)[0], xs)
                teacher_logits = jax.lax.stop_gradient(teacher_logits)
            steps = state.count + jnp.arange(xs.shape[0], dtype=jnp.int32)
            keys = jax.vmap(lambda t: jax.random.fold_in(jax.random.key(0), t))(steps)
            shared = (xs, ys, teacher_logits, keys)
            params, opt_state, losses = self._over_members(self._member_train, execution, members, shared)
            return PopulationState(params, opt_state, state.hparams, state.count + xs.shape[0]), losses

        return run

    def _train_fn(self, execution: str):
        if execution not in self._compiled:
            self._compiled[execution] = jax.jit(self._train_body(execution), donate_argnums=0)
        return self._compiled[execution]

    def _scores(self, state: PopulationState, x, y, rows: int) -> dict:
        """Per-member val scores in chunks of ``rows`` (a scan over the full chunks, then the rest), traced."""
        score, full = jax.vmap(self._member_eval, in_axes=(0, 0, None, None)), (len(y) // rows) * rows
        hparams = {k: v for k, v in state.hparams.items() if k == "bits"}
        totals = {"loss": 0.0, "accuracy": 0.0}  # sums of chunk means times their rows
        if full:
            chunks = (x[:full].reshape(-1, rows, *x.shape[1:]), y[:full].reshape(-1, rows, *y.shape[1:]))
            _, each = jax.lax.scan(lambda c, xy: (c, score(state.params, hparams, *xy)), None, chunks)
            totals = {k: jnp.sum(each[k], axis=0) * rows for k in totals}
        if full < len(y):
            rest = score(state.params, hparams, x[full:], y[full:])
            totals = {k: v + rest[k] * (len(y) - full) for k, v in totals.items()}
        return {k: v / len(y) for k, v in totals.items()}

    def train_epochs(self, state: PopulationState, x, y, index, val_x, val_y, *, eval_rows: int = 2048):
        """``index.shape[0]`` epochs for every member in one call, each scored on the validation rows after it.

        Args:
          state: from :meth:`init` or a previous call (donated: use the returned one).
          x, y: the training rows, the same for every member; checked and
            copied to the device once while the same array objects come back.
          index: ``(epochs, steps, batch)`` integer rows of ``x`` per step.
          val_x, val_y: the rows every member is scored on after each epoch (eval mode), ``eval_rows`` at once.

        Returns:
          ``(state, losses, scores)``: ``(P, epochs, steps)`` losses, ``{"loss", "accuracy"}`` ``(P, epochs)``.
        """
        index, where = np.asarray(index), "Population.train_epochs"
        if index.ndim != 3 or not np.issubdtype(index.dtype, np.integer) or index.min() < 0 or index.max() >= len(y):
            raise ValueError(f"{where}: index must be (epochs, steps, batch) rows of x, got {index.shape}")
        cached = self._compiled.get("rows")  # the host arrays last checked, then their device copies
        if cached is None or any(c is not a for c, a in zip(cached, (x, y, val_x, val_y), strict=False)):
            self._check_data(where, ("x", "y"), state.params, x, y)
            self._check_data(where, ("val_x", "val_y"), state.params, val_x, val_y)
            cached = (x, y, val_x, val_y, *(jnp.asarray(a) for a in (x, y, val_x, val_y)))
            self._compiled["rows"] = cached
        execution = self.execution
        if execution == "auto":
            execution = self.chosen or self.choose(state, cached[4][index[0]], cached[5][index[0]])
        key = ("epochs", execution, int(eval_rows))
        if key not in self._compiled:
            train = self._train_body(execution)

            def run(state, index, x, y, val_x, val_y):
                def epoch(state, idx):
                    state, losses = train(state, x[idx], y[idx])
                    return state, (losses, self._scores(state, val_x, val_y, eval_rows))

                state, (losses, scores) = jax.lax.scan(epoch, state, index)
                return state, jnp.swapaxes(losses, 0, 1), {k: v.T for k, v in scores.items()}

            self._compiled[key] = jax.jit(run, donate_argnums=0)
        return self._compiled[key](state, jnp.asarray(index, jnp.int32), *cached[4:])

    # public ---------------------------------------------------------------------------------
    def _check_data(self, where: str, names: tuple[str, str], params, x, y) -> None:
        """Finite inputs, and (for the default class loss) integer labels within the model's logits; before compiling.

        Skipped for traced arrays; the logit count is one abstract trace per input shape.
        """
        if is_traced(x) or is_traced(y):
            return
        check_finite(where, names[0], x)
        if self.loss_fn is not cross_entropy:
            return  # a loss of the user's own: its labels need not be classes
        rows = x.reshape(-1, *x.shape[y.ndim :])
        key = ("logits", rows.shape[1:], str(rows.dtype))
        if key not in self._compiled:
            member = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), params)
            self._compiled[key] = logit_count(self.apply_fn, member, rows)
        classes = self._compiled[key]
        check_labels(
            where, names[1], np.asarray(y).reshape(-1), num_classes=classes, of=f"the model's {classes} logits"
        )

    def init(self, params, hparams: Mapping | None = None) -> PopulationState:
        """The starting state: ``params`` (a population), fresh optimizer states, ``hparams`` per member."""
        p = size(params)
        hp = check_hparams("Population", dict(hparams or {}), p)
        distilling = sorted(set(hp) & set(DISTILL_DEFAULTS))
        if distilling and self.teacher is None:
            raise ValueError(f"Population: hyperparameters {distilling} need Population(teacher=(apply_fn, params))")
        if self.teacher is not None:
            hp = {**{k: jnp.full((p,), v, jnp.float32) for k, v in DISTILL_DEFAULTS.items()}, **hp}
        return _fresh_state(params, hp)

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
        self._check_data("Population.train", ("xs", "ys"), state.params, xs, ys)
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
        x, y = jnp.asarray(x), jnp.asarray(y)
        self._check_data("Population.evaluate", ("x", "y"), params, x, y)
        if "eval" not in self._compiled:
            self._compiled["eval"] = jax.jit(jax.vmap(self._member_eval, in_axes=(0, 0, None, None)))
        return self._compiled["eval"](params, hparams, x, y)
