"""Jitted steps of training and evaluation: the train state, the objective, one optimizer step, a whole split.

A step works on any model of the contract, ``(apply_fn, params)``: an
:class:`~hamjax.ApplyFn` from :func:`~hamjax.functional` (NNX) or
:func:`~hamjax.linen_functional` (Linen), whose batch-norm statistics are
updated and whose dropout draws from a per-step key, or a plain
``apply_fn(params, x)``. :func:`hamjax.train.fit` runs these steps in its
loop and re-exports them; a training loop of one's own (a benchmark, an
iterative pruning schedule) can call them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import data as data_lib
from hamjax import precision as precision_lib
from hamjax._base import call_model, optax_update, trainable, with_trainable
from hamjax._checks import check_choice
from hamjax._losses import cross_entropy
from hamjax.graph.remat import REMAT_POLICIES, rematerialize

Params = Any


def batch_grads(
    apply_fn,
    params: Params,
    split: data_lib.Split,
    batch_size: int,
    *,
    seed: int = 0,
    step: int = 0,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
) -> Params:
    """Gradients of the loss on one training batch with respect to the trainable params.

    The batch is the one :func:`fit` would use at ``step`` (see
    :func:`hamjax.data.batch_at`); the model runs in eval mode. Pruning
    criteria such as SNIP saliency score weights from these.

    Args:
      apply_fn: the model's apply function (any kind of the contract).
      params: its params.
      split: the :class:`hamjax.data.Split` to draw the batch from.
      batch_size: examples in the batch (capped at the split's size).
      seed: the data-order seed.
      step: which step's batch to use.
      loss_fn: ``loss_fn(logits, labels) -> scalar``.

    Returns:
      A pytree shaped like :func:`~hamjax._base.trainable` of ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import hamjax
      >>> ds = hamjax.data.load("digits")
      >>> params = {"w": jnp.zeros((64, 10))}
      >>> g = hamjax.train.batch_grads(lambda p, x: x.reshape(x.shape[0], -1) @ p["w"], params, ds.train, 32)
      >>> g["w"].shape
      (64, 10)
    """
    x, y = data_lib.batch_at(split, min(batch_size, len(split.y)), step, seed=seed)

    def loss(train_params):
        logits, _ = call_model(apply_fn, with_trainable(apply_fn, params, train_params), x)
        return loss_fn(logits, y)

    return jax.grad(loss)(trainable(apply_fn, params))


class TrainState(NamedTuple):
    """What one training step carries: params, optimizer state and the count of steps taken.

    Attributes:
      params: the model's params (all of them: trainable and collections).
      opt_state: the optimizer state over the trainable params.
      count: int32 scalar, the steps taken so far; the next step's dropout
        key is ``fold_in(key(seed), count)``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> params = {"w": jnp.zeros((2, 2))}
      >>> state = TrainState(params, optax.sgd(0.1).init(params), jnp.asarray(0, jnp.int32))
      >>> int(state.count)
      0
    """

    params: Params
    opt_state: Any
    count: jax.Array


class Objective(NamedTuple):
    """What a training step minimises, when it is more than ``loss_fn(logits, labels)``.

    ``loss(apply_fn, params, x, y, *, rng, frozen, batch, opt_state)``
    returns ``(loss, (logits, new_params, metrics))``: the scalar to
    minimise, the model's logits on ``x`` (for the accuracy metric), the
    params with updated collections (from :func:`~hamjax._base.call_model`
    in train mode) and a dict of extra scalar metrics. ``params`` already
    holds the trainable params being differentiated.

    Attributes:
      loss: the function above.
      frozen: arrays every step reads but never trains (a teacher's
        params). They are an argument of the jitted step, not constants
        baked into it, so one compilation serves any values.
      per_example: arrays with a leading axis over the training split (a
        teacher's cached outputs), or ``None``. Each step receives, as
        ``batch``, the rows of the examples in its batch.

    Examples:
      >>> import jax, optax
      >>> from hamjax import call_model
      >>> from hamjax.train import Objective
      >>> def smoothed(apply_fn, params, x, y, *, rng, frozen, batch, opt_state):
      ...     logits, new_params = call_model(apply_fn, params, x, train=True, rng=rng)
      ...     targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), 0.1)
      ...     return optax.softmax_cross_entropy(logits, targets).mean(), (logits, new_params, {})
      >>> objective = Objective(smoothed)
    """

    loss: Callable[..., tuple[jax.Array, tuple[jax.Array, Params, dict]]]
    frozen: Any = None
    per_example: Any = None


def supervised(loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy) -> Objective:
    """The plain objective: ``loss_fn(logits, labels)`` of the model in train mode.

    Args:
      loss_fn: ``loss_fn(logits, labels) -> scalar``.

    Returns:
      An :class:`Objective`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> objective = supervised()
      >>> loss, (logits, _, metrics) = objective.loss(lambda p, x: x @ p, jnp.zeros((3, 2)), jnp.ones((4, 3)),
      ...                                             jnp.zeros(4, jnp.int32), rng=jax.random.key(0), frozen=None,
      ...                                             batch=None, opt_state=None)
      >>> round(float(loss), 4), logits.shape, metrics
      (0.6931, (4, 2), {})
    """

    def loss(apply_fn, params, x, y, *, rng, frozen, batch, opt_state):
        del frozen, batch, opt_state
        logits, new_params = call_model(apply_fn, params, x, train=True, rng=rng)
        return loss_fn(logits, y), (logits, new_params, {})

    return Objective(loss)


def make_train_step(
    apply_fn,
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
    seed: int = 0,
    objective: Objective | None = None,
    remat: str = "none",
    hooks=None,
) -> Callable[..., tuple[TrainState, dict]]:
    """Build a jitted ``step(state, x, y, frozen=None, batch=None) -> (state, metrics)``.

    Gradients flow into :func:`~hamjax._base.trainable` params only; batch
    statistics come back through the training protocol; dropout uses
    ``fold_in(key(seed), state.count)``. The loss is differentiated multiplied by
    :func:`hamjax.precision.loss_scale_of` the optimizer state (1 unless
    the optimizer is a loss-scale adapter, which unscales the gradients).

    Args:
      apply_fn: the model's apply function.
      optimizer: an optax transformation over the trainable params.
      loss_fn: ``loss_fn(logits, labels) -> scalar``.
      seed: the seed of the dropout keys.
      objective: replaces ``loss_fn`` with an :class:`Objective`; the step
        then takes its ``frozen`` arrays and the ``batch`` rows of its
        ``per_example`` arrays as arguments.
      remat: a rematerialisation policy from
        :data:`hamjax.graph.REMAT_POLICIES`: the loss (the model's forward
        pass) is computed in checkpointed segments
        (:func:`hamjax.graph.rematerialize`), so the step keeps fewer
        activations for its backward pass; ``"none"`` keeps them all.

    Returns:
      The jitted step, its state argument donated; ``metrics`` has ``loss`` (unscaled, without
      the penalty) and ``accuracy`` of the batch, the ``loss_scale`` of the next step, the
      ``penalty`` where ``hooks`` add one, and the objective's own metrics.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> apply_fn, opt = (lambda p, x: x @ p["w"]), optax.sgd(0.1)
      >>> params = {"w": jnp.zeros((3, 2))}
      >>> step = make_train_step(apply_fn, opt)
      >>> state = TrainState(params, opt.init(params), jnp.asarray(0, jnp.int32))
      >>> state, metrics = step(state, jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
      >>> int(state.count), sorted(metrics)
      (1, ['accuracy', 'loss', 'loss_scale'])
    """
    check_choice("make_train_step", "remat", remat, REMAT_POLICIES)
    base_key = jax.random.key(seed)
    objective = objective or supervised(loss_fn)

    view, weights, penalty = (None, None, None) if hooks is None else hooks[:3]

    def step(state: TrainState, x, y, frozen=None, batch=None):
        rng = jax.random.fold_in(base_key, state.count)
        scale = precision_lib.loss_scale_of(state.opt_state)
        targets = y
        if view is not None:  # the keys of the hooks are folded from the step's, which dropout keeps using
            x, targets = view(jax.random.fold_in(rng, 1), apply_fn, state.params, x, y)

        def loss_of(train_params):
            used = train_params if weights is None else weights(jax.random.fold_in(rng, 2), train_params)
            params = with_trainable(apply_fn, state.params, used)
            loss, (logits, new_params, extra) = objective.loss(
                apply_fn, params, x, targets, rng=rng, frozen=frozen, batch=batch, opt_state=state.opt_state
            )
            total = loss
            if penalty is not None:
                extra = {**extra, "penalty": penalty(train_params)}
                total = loss + extra["penalty"]
            return total * scale, (loss, logits, new_params, extra)

        value_and_grad = jax.value_and_grad(rematerialize(loss_of, remat), has_aux=True)
        (_, (loss, logits, new_params, extra)), grads = value_and_grad(trainable(apply_fn, state.params))
        updates, opt_state = optax_update(optimizer, grads, state.opt_state, trainable(apply_fn, state.params))
        new_trainable = optax.apply_updates(trainable(apply_fn, state.params), updates)
        params = with_trainable(apply_fn, new_params, new_trainable)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        metrics = {**extra, "loss": loss, "accuracy": accuracy, "loss_scale": precision_lib.loss_scale_of(opt_state)}
        return TrainState(params, opt_state, state.count + 1), metrics

    return jax.jit(step, donate_argnums=0)


def make_eval_step(apply_fn, *, loss_fn=cross_entropy) -> Callable:
    """Build a jitted ``eval(params, x, y, n_valid) -> (loss_sum, correct)`` over padded batches.

    Only the first ``n_valid`` rows count, so a short last batch padded to the
    full size reuses the compiled step. The loss is always the softmax
    cross-entropy: validation reports it whatever ``fit`` trains with.

    Args:
      apply_fn: the model's apply function (run in eval mode).
      loss_fn: accepted for symmetry with :func:`make_train_step`; not used.

    Returns:
      The jitted function; ``loss_sum`` and ``correct`` are sums over the valid rows.

    Examples:
      >>> import jax.numpy as jnp
      >>> eval_step = make_eval_step(lambda p, x: x @ p)
      >>> loss_sum, correct = eval_step(jnp.eye(2), jnp.eye(2), jnp.array([0, 0]), 1)
      >>> int(correct)
      1
    """
    del loss_fn

    def evaluate(params, x, y, n_valid):
        logits, _ = call_model(apply_fn, params, x)
        valid = jnp.arange(x.shape[0]) < n_valid
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        correct = (jnp.argmax(logits, -1) == y) & valid
        return jnp.sum(jnp.where(valid, per_example, 0.0)), jnp.sum(correct)

    return jax.jit(evaluate)


def logit_count(apply_fn, params, x) -> int | None:
    """How many logits the model gives per example, from an abstract trace on one row of ``x`` (nothing compiles).

    Args:
      apply_fn: the model's apply function (any kind of the contract).
      params: its params.
      x: a batch of inputs ``(N, *input_shape)``; only ``x[:1]`` is traced.

    Returns:
      ``C`` when the model's output is ``(N, C)``, ``None`` for any other output.

    Examples:
      >>> import numpy as np
      >>> logit_count(lambda p, x: x @ p, np.ones((3, 4), np.float32), np.ones((2, 3), np.float32))
      4
    """
    out = jax.eval_shape(lambda p, a: call_model(apply_fn, p, a)[0], params, x[:1])
    shape = getattr(out, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) == 2 else None


def evaluate(
    apply_fn,
    params,
    split: data_lib.Split,
    *,
    batch_size: int = 256,
    eval_step=None,
    num_classes: int | None = None,
) -> dict:
    """Loss and accuracy of the model on a whole split.

    The last partial batch is padded to ``batch_size``, so one shape compiles.

    Args:
      apply_fn: the model's apply function.
      params: its params.
      split: a :class:`hamjax.data.Split`.
      batch_size: examples per evaluation call.
      eval_step: a step from :func:`make_eval_step`, reused across calls.
      num_classes: labels must lie in ``[0, num_classes)``; ``None`` takes
        the model's logit count (:func:`logit_count`).

    Returns:
      ``{"loss": float, "accuracy": float}``.

    Raises:
      ValueError: before anything compiles, when ``split`` is not a
        :class:`hamjax.data.Split`, is empty, or its arrays are refused by
        :func:`hamjax.data.check_split` (lengths that differ, non-finite
        inputs, labels that are not integers in range).

    Examples:
      >>> import numpy as np
      >>> from hamjax.data import Split
      >>> split = Split(np.eye(3, dtype=np.float32), np.array([0, 1, 0]))
      >>> evaluate(lambda p, x: x @ p, np.eye(3, dtype=np.float32), split, batch_size=2)["accuracy"]
      0.6666666666666666
    """
    if not isinstance(split, data_lib.Split):
        raise ValueError(
            f"evaluate: split must be a hamjax.data.Split, got {data_lib.describe_value(split)}; "
            "pass dataset.val, or hamjax.data.Split(x, y)"
        )
    x, y = data_lib.check_split("evaluate", "split.x", "split.y", split.x, split.y, num_classes=num_classes, copy=False)
    if num_classes is None:
        count = logit_count(apply_fn, params, x[:1])
        if count is not None:
            data_lib.check_labels("evaluate", "split.y", y, num_classes=count, of=f"the model's {count} logits")
    n = len(split.y)
    eval_step = eval_step or make_eval_step(apply_fn)
    batch_size = min(batch_size, n)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        valid = len(y)
        if valid < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - valid, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - valid, y.dtype)])
        l_sum, c = eval_step(params, x, y, valid)
        loss_sum += float(l_sum)
        correct += int(c)
    return {"loss": loss_sum / n, "accuracy": correct / n}
