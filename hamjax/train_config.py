"""What :func:`hamjax.train.fit` does: :class:`TrainConfig`, and the optax optimizer it names.

The config is plain data (numbers, strings, booleans) so that a checkpoint
records it as JSON and a resumed run can tell whether it is the same run;
an augmentation given as a callable is recorded by its ``repr``.
:func:`make_optimizer` builds the named optimizer and its schedule;
:func:`configure_optimizer` wraps any optimizer in what the config adds
around it: the spectral-norm penalty, gradient clipping and gradient
accumulation (``optax.MultiSteps``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from hamjax import precision as precision_lib
from hamjax._checks import check_choice, check_int, check_number, check_positive
from hamjax.graph.remat import REMAT_POLICIES

__all__ = [
    "ADVERSARIAL_METHODS",
    "LOSS_SCALES",
    "OPTIMIZERS",
    "TrainConfig",
    "clip_by_leaf_norm",
    "config_record",
    "configure_optimizer",
    "make_optimizer",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
LOSS_SCALES = precision_lib.LOSS_SCALES
ADVERSARIAL_METHODS = ("none", "fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What :func:`hamjax.train.fit` does.

    Attributes:
      epochs: passes over the training split, an integer >= 1.
      batch_size: examples per step, an integer >= 1, at most the training
        split. With ``accumulate=k`` this is the micro-batch: an update sees
        ``k * batch_size`` examples.
      learning_rate: peak learning rate, a finite number > 0.
      optimizer: one of ``OPTIMIZERS``.
      weight_decay: decoupled weight decay (``adamw``) or L2 added to the
        gradient of every trainable leaf (others); >= 0.
      warmup_steps: linear warm-up updates before cosine decay (an integer >= 0);
        0 keeps the learning rate constant.
      eval_every: steps between validations; ``None`` is once per epoch.
      patience: stop after this many validations without improvement;
        ``None`` never stops early.
      checkpoint_every: steps between checkpoints (with ``checkpoint_dir``);
        ``None`` is at the end of an epoch once ``checkpoint_seconds`` have
        passed since the last checkpoint (or the start). The last step is
        always saved.
      checkpoint_seconds: the least wall-clock time between two epoch-end
        checkpoints when ``checkpoint_every`` is ``None``, a number >= 0
        (0 saves every epoch). A checkpoint of a small model costs tens of
        milliseconds, more than an epoch on the bundled data; a crash loses
        at most this much training.
      seed: an integer; everything random (data order, dropout, augmentation,
        mixing, adversarial starts, DropConnect masks) derives from it.
      precision: a mixed-precision policy string such as
        ``"p=f32,c=bf16,o=f32"`` (see :class:`hamjax.precision.Policy`);
        ``None`` trains the model as it is.
      loss_scale: one of ``LOSS_SCALES``: ``"dynamic"`` wraps the optimizer
        in :func:`hamjax.precision.dynamic_loss_scale`, ``"auto"`` does so
        when the policy computes in float16, ``"none"`` never does.
      remat: one of ``REMAT_POLICIES``: ``"none"`` keeps every activation for
        the backward pass; ``"full"``, ``"dots"``, ... recompute the forward
        pass in checkpointed segments (:func:`hamjax.graph.rematerialize`),
        trading time for memory; the results agree within float rounding.
      accumulate: micro-batches per update (``optax.MultiSteps``), an integer
        >= 1: the gradients of ``accumulate`` steps are averaged and applied
        once, which equals one step on the concatenated batch for models
        without batch statistics (a batch norm in train mode normalises each
        micro-batch by its own statistics, as in every framework).
      clip_norm: clip the update's gradient to this global norm
        (``optax.clip_by_global_norm``), a number > 0; ``None`` does not.
      clip_leaf_norm: clip each leaf's gradient to this norm
        (:func:`clip_by_leaf_norm`), a number > 0; ``None`` does not.
      label_smoothing: train on ``(1 - s) * one_hot + s / C``, in [0, 1).
      mixup: the Beta(alpha, alpha) of mixup (Zhang et al. 2018), >= 0; 0 is off.
      cutmix: the Beta(alpha, alpha) of CutMix (Yun et al. 2019), >= 0; 0 is
        off. With both on, each step uses one of them at random.
      augment: ``None``, a spec string for :func:`hamjax.augment.parse`
        (``"shift=2,rotate=10,cutout=8"``, ``"randaugment=0.5"``), or a
        callable ``(key, x) -> x`` applied to every training batch.
      l1: coefficient of the L1 penalty on kernels (:func:`hamjax.regularize.l1`), >= 0.
      l2: coefficient of the L2 penalty on kernels (:func:`hamjax.regularize.l2`),
        >= 0; both together are the elastic net.
      spectral: coefficient of the spectral-norm penalty on kernels
        (:func:`hamjax.regularize.spectral_penalty`), >= 0.
      drop_connect: rate of DropConnect on kernels during training
        (:func:`hamjax.regularize.drop_connect`), in [0, 1).
      adversarial: one of ``ADVERSARIAL_METHODS``: train on FGSM or PGD
        inputs (L-infinity, within the training inputs' range) made against
        the current params at every step (Madry et al. 2018), instead of
        the clean batch.
      epsilon: the attack's L-infinity radius, >= 0 (> 0 with ``adversarial``).
      adversarial_steps: PGD steps, an integer >= 1.
      data_parallel: shard every batch over all devices
        (:mod:`hamjax.parallel`); ``batch_size`` must divide evenly.
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    eval_every: int | None = None
    patience: int | None = None
    checkpoint_every: int | None = None
    checkpoint_seconds: float = 30.0
    seed: int = 0
    precision: str | None = None
    loss_scale: str = "auto"
    remat: str = "none"
    accumulate: int = 1
    clip_norm: float | None = None
    clip_leaf_norm: float | None = None
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    augment: str | Callable | None = None
    l1: float = 0.0
    l2: float = 0.0
    spectral: float = 0.0
    drop_connect: float = 0.0
    adversarial: str = "none"
    epsilon: float = 0.0
    adversarial_steps: int = 1
    data_parallel: bool = False

    def __post_init__(self):
        def normalise(name, value):
            object.__setattr__(self, name, value)  # plain Python values, so the config stays JSON for checkpoints

        where = "TrainConfig"
        for name in ("epochs", "batch_size", "accumulate", "adversarial_steps"):
            normalise(name, check_int(where, name, getattr(self, name), minimum=1))
        normalise("learning_rate", check_positive(where, "learning_rate", self.learning_rate))
        check_choice(where, "optimizer", self.optimizer, OPTIMIZERS)
        for name in ("weight_decay", "checkpoint_seconds", "mixup", "cutmix", "l1", "l2", "spectral", "epsilon"):
            normalise(name, check_number(where, name, getattr(self, name), minimum=0))
        for name in ("label_smoothing", "drop_connect"):
            normalise(
                name, check_number(where, name, getattr(self, name), minimum=0, maximum=1, exclusive_maximum=True)
            )
        normalise("warmup_steps", check_int(where, "warmup_steps", self.warmup_steps, minimum=0))
        for name in ("eval_every", "patience", "checkpoint_every"):
            if getattr(self, name) is not None:
                normalise(name, check_int(where, name, getattr(self, name), minimum=1))
        for name in ("clip_norm", "clip_leaf_norm"):
            if getattr(self, name) is not None:
                normalise(name, check_positive(where, name, getattr(self, name)))
        normalise("seed", check_int(where, "seed", self.seed))
        if isinstance(self.precision, precision_lib.Policy):
            normalise("precision", str(self.precision))
        if self.precision is not None:
            try:
                precision_lib.Policy.parse(self.precision)
            except ValueError as err:
                raise ValueError(f"{where}: precision={self.precision!r} is not a policy: {err}") from None
        check_choice(where, "loss_scale", self.loss_scale, LOSS_SCALES)
        check_choice(where, "remat", self.remat, REMAT_POLICIES)
        check_choice(where, "adversarial", self.adversarial, ADVERSARIAL_METHODS)
        if self.adversarial != "none" and self.epsilon == 0:
            raise ValueError(f"{where}: adversarial={self.adversarial!r} needs epsilon > 0, got epsilon=0.0")
        if not isinstance(self.data_parallel, bool):
            raise ValueError(f"{where}: data_parallel must be True or False, got {self.data_parallel!r}")
        if isinstance(self.augment, str):
            from hamjax import augment

            try:
                augment.parse(self.augment)
            except ValueError as err:
                raise ValueError(f"{where}: augment={self.augment!r} is not an augmentation: {err}") from None
        elif self.augment is not None and not callable(self.augment):
            raise ValueError(
                f"{where}: augment must be None, a spec string such as 'shift=2,rotate=10' "
                f"or a callable (key, x) -> x, got {type(self.augment).__name__}"
            )


TrainConfig.__module__ = "hamjax.train"  # its public home: where the reference documents it, once


def config_record(config: TrainConfig) -> dict:
    """``config`` as a JSON object (a callable ``augment`` by its ``repr``), as checkpoints record it.

    Examples:
      >>> config_record(TrainConfig(epochs=2))["epochs"]
      2
    """
    record = dataclasses.asdict(config)
    if callable(record["augment"]):
        record["augment"] = repr(record["augment"])
    return record


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax optimizer that ``config`` names, with its learning-rate schedule.

    With ``config.accumulate = k`` the schedule spans ``ceil(total_steps / k)``
    updates, the number the optimizer takes inside ``optax.MultiSteps``. What
    the config adds around an optimizer (penalties, clipping, accumulation) is
    :func:`configure_optimizer`'s, so that an optimizer of one's own gets it too.

    Args:
      config: a :class:`TrainConfig`.
      total_steps: the number of training steps (micro-batches) the schedule spans.

    Returns:
      An ``optax.GradientTransformation``.

    Examples:
      >>> from hamjax.train import TrainConfig, make_optimizer
      >>> opt = make_optimizer(TrainConfig(optimizer="sgd"), total_steps=100)
    """
    updates = max(1, math.ceil(total_steps / config.accumulate))
    if config.warmup_steps:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, config.warmup_steps, max(updates, config.warmup_steps + 1)
        )
    else:
        lr = config.learning_rate
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    base = {"adam": optax.adam, "sgd": optax.sgd, "momentum": lambda lr: optax.sgd(lr, momentum=0.9)}
    opt = base[config.optimizer](lr)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def clip_by_leaf_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale each leaf of the gradient down to at most ``max_norm`` (its own L2 norm), leaving smaller ones alone.

    Args:
      max_norm: a number > 0 (or a traced scalar).

    Returns:
      A stateless ``optax.GradientTransformation``.

    Examples:
      >>> import jax.numpy as jnp
      >>> clip = clip_by_leaf_norm(1.0)
      >>> g, _ = clip.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}, clip.init(None))
      >>> [round(float(v), 3) for v in g["a"]], [round(float(v), 3) for v in g["b"]]
      ([0.6, 0.8], [0.3, 0.4])
    """
    if not isinstance(max_norm, jax.Array):
        max_norm = check_positive("clip_by_leaf_norm", "max_norm", max_norm)

    def clip(g):
        norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
        factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
        return (g * factor).astype(g.dtype)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def configure_optimizer(optimizer: optax.GradientTransformation, config: TrainConfig) -> Any:
    """``optimizer`` with what ``config`` adds around it, innermost first.

    The spectral-norm penalty's gradient (``config.spectral``) joins the
    gradient, then per-leaf and global clipping apply, then the optimizer;
    ``optax.MultiSteps`` (``config.accumulate > 1``) wraps it all, so the
    clipping and the update see the mean gradient of the micro-batches.

    Args:
      optimizer: any ``optax.GradientTransformation`` (the one
        :func:`make_optimizer` builds, a masked optimizer, ...).
      config: a :class:`TrainConfig`.

    Returns:
      An ``optax.GradientTransformation`` (``optimizer`` itself when the
      config adds nothing).

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> opt = configure_optimizer(optax.sgd(1.0), TrainConfig(accumulate=2))
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, state = opt.update({"w": jnp.ones(2)}, opt.init(params), params)
      >>> updates["w"].tolist()  # the first micro-batch only accumulates
      [0.0, 0.0]
      >>> updates, state = opt.update({"w": jnp.full(2, 3.0)}, state, params)
      >>> updates["w"].tolist()  # the second applies the mean gradient
      [-2.0, -2.0]
    """
    parts = []
    if config.spectral:
        from hamjax import regularize

        parts.append(regularize.spectral_penalty(config.spectral))
    if config.clip_leaf_norm is not None:
        parts.append(clip_by_leaf_norm(config.clip_leaf_norm))
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    if parts:
        optimizer = optax.chain(*parts, optimizer)
    if config.accumulate > 1:
        optimizer = _standard_promotion(
            optax.MultiSteps(optimizer, every_k_schedule=config.accumulate).gradient_transformation()
        )
    return optimizer


def _standard_promotion(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` traced under standard dtype promotion: ``optax.MultiSteps`` mixes its int32 step count
    with float32 arithmetic, which a process running under strict promotion would refuse."""

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return inner.init(params)

    def update(updates, state, params=None, **extra):
        with jax.numpy_dtype_promotion("standard"):
            return inner.update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(init, update)
