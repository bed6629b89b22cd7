"""What a training step does to its batch and weights before the loss: augmentation, mixing, attacks, penalties.

:func:`train_hooks` turns the regularisation fields of a
:class:`~hamjax.train.TrainConfig` into three pure functions that
:func:`hamjax.train.make_train_step` calls inside the jitted step:

- ``view(key, apply_fn, params, x, y) -> (x, targets)``: the batch the
  loss sees: augmented (:mod:`hamjax.augment`), its labels smoothed or mixed
  into probability rows (mixup, CutMix), its inputs replaced by FGSM or PGD
  examples against the current params (:mod:`hamjax.regularize`);
- ``weights(key, train_params) -> train_params``: DropConnect masks;
- ``penalty(train_params) -> scalar``: the elastic-net term added to the loss.

Each is ``None`` when the config asks for nothing of its kind, so a plain
run compiles the same step as before. The spectral-norm penalty is an
optax transform instead (:func:`hamjax.train.configure_optimizer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = ["TrainHooks", "train_hooks"]


class TrainHooks(NamedTuple):
    """The functions a train step applies around its loss; ``None`` where nothing applies.

    Attributes:
      view: ``view(key, apply_fn, params, x, y) -> (x, targets)``.
      weights: ``weights(key, train_params) -> train_params``.
      penalty: ``penalty(train_params) -> scalar`` added to the loss.
      notes: what the hooks do, in words, for a report (``("mixup 0.2", ...)``).

    Examples:
      >>> TrainHooks().notes
      ()
    """

    view: Callable | None = None
    weights: Callable | None = None
    penalty: Callable | None = None
    notes: tuple[str, ...] = ()


def train_hooks(config, num_classes: int, data_range: tuple[float, float] | None = None) -> TrainHooks:
    """The :class:`TrainHooks` of ``config``'s augmentation and regularisation fields.

    Args:
      config: a :class:`hamjax.train.TrainConfig`.
      num_classes: the number of classes (the width of smoothed or mixed targets).
      data_range: ``(low, high)`` of the training inputs: adversarial inputs
        are clipped to it; ``None`` does not clip.

    Returns:
      A :class:`TrainHooks`.

    Examples:
      >>> from hamjax.train import TrainConfig
      >>> hooks = train_hooks(TrainConfig(label_smoothing=0.1), num_classes=10)
      >>> hooks.notes
      ('label smoothing 0.1',)
      >>> import jax, jax.numpy as jnp
      >>> x, targets = hooks.view(jax.random.key(0), None, None, jnp.zeros((2, 3)), jnp.array([0, 1]))
      >>> [round(float(v), 2) for v in targets[0, :3]]
      [0.91, 0.01, 0.01]
    """
    notes = []
    augment_fn = _augmentation(config.augment)
    if augment_fn is not None:
        notes.append(f"augment {augment_fn!r}")
    soft = bool(config.label_smoothing or config.mixup or config.cutmix)
    if config.label_smoothing:
        notes.append(f"label smoothing {config.label_smoothing:g}")
    if config.mixup:
        notes.append(f"mixup {config.mixup:g}")
    if config.cutmix:
        notes.append(f"cutmix {config.cutmix:g}")
    if config.adversarial != "none":
        steps = f", {config.adversarial_steps} steps" if config.adversarial == "pgd" else ""
        notes.append(f"{config.adversarial} eps {config.epsilon:g}{steps}")
    view = None
    if augment_fn is not None or soft or config.adversarial != "none":
        view = _view(config, augment_fn, soft, num_classes, data_range)
    weights = None
    if config.drop_connect:
        from hamjax import regularize

        rate = config.drop_connect
        notes.append(f"DropConnect {rate:g}")

        def weights(key, train_params):
            return regularize.drop_connect(key, train_params, rate)

    penalty = None
    if config.l1 or config.l2:
        from hamjax import regularize

        l1, l2 = config.l1, config.l2
        notes.append(
            {(True, False): f"L1 {l1:g}", (False, True): f"L2 {l2:g}"}.get(
                (bool(l1), bool(l2)), f"elastic net L1 {l1:g} L2 {l2:g}"
            )
        )

        def penalty(train_params):
            return regularize.elastic_net(train_params, l1=l1, l2=l2)

    if config.spectral:
        notes.append(f"spectral norm {config.spectral:g}")
    if config.accumulate > 1:
        notes.append(f"accumulate {config.accumulate}")
    if config.clip_norm is not None:
        notes.append(f"clip norm {config.clip_norm:g}")
    if config.clip_leaf_norm is not None:
        notes.append(f"clip leaf norm {config.clip_leaf_norm:g}")
    return TrainHooks(view, weights, penalty, tuple(notes))


def _augmentation(spec) -> Callable | None:
    if spec is None or callable(spec):
        return spec
    from hamjax import augment

    return augment.parse(spec)


def _view(config, augment_fn, soft: bool, num_classes: int, data_range) -> Callable:
    from hamjax import augment, regularize

    smoothing, mixup, cutmix = config.label_smoothing, config.mixup, config.cutmix
    method, epsilon, steps = config.adversarial, config.epsilon, config.adversarial_steps

    def view(key, apply_fn, params, x, y) -> tuple[jax.Array, Any]:
        aug_key, mix_key, coin_key, attack_key = jax.random.split(key, 4)
        if augment_fn is not None:
            x = augment_fn(aug_key, x)
        targets = augment.soft_targets(y, num_classes, smoothing) if soft else y
        if mixup and cutmix:
            x, targets = jax.lax.cond(  # one of the two, computed alone
                jax.random.bernoulli(coin_key),
                lambda: augment.cutmix(mix_key, x, targets, cutmix),
                lambda: augment.mixup(mix_key, x, targets, mixup),
            )
        elif mixup:
            x, targets = augment.mixup(mix_key, x, targets, mixup)
        elif cutmix:
            x, targets = augment.cutmix(mix_key, x, targets, cutmix)
        if method == "fgsm":
            x = regularize.fgsm(apply_fn, params, x, targets, epsilon=epsilon, clip=data_range)
        elif method == "pgd":
            x = regularize.pgd(
                apply_fn, params, x, targets, epsilon=epsilon, steps=steps, key=attack_key, clip=data_range
            )
        return x, targets

    return view
