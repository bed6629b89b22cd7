import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference_models import plain_mlp

import hamjax
from hamjax.train import TrainConfig, TrainState, fit, make_train_step
from hamjax.train_views import TrainHooks, train_hooks

KEY = jax.random.key(3)


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(64)(x)))
        return nn.Dense(10)(x)


def _batch(digits, n=16):
    return jnp.asarray(digits.train.x[:n]), jnp.asarray(digits.train.y[:n])


def test_a_plain_config_adds_no_hook_so_the_step_is_unchanged():
    hooks = train_hooks(TrainConfig(), num_classes=10)
    assert hooks == TrainHooks()


def test_label_smoothing_gives_probability_rows_and_keeps_the_inputs(digits):
    x, y = _batch(digits)
    hooks = train_hooks(TrainConfig(label_smoothing=0.2), num_classes=10)
    x2, targets = hooks.view(KEY, None, None, x, y)
    assert x2 is x and targets.shape == (16, 10)
    np.testing.assert_allclose(np.asarray(targets.sum(-1)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(targets[np.arange(16), y]), 0.8 + 0.02, rtol=1e-6)


def test_mixup_and_cutmix_mix_inputs_and_targets_per_key(digits):
    x, y = _batch(digits)
    for config in (TrainConfig(mixup=0.4), TrainConfig(cutmix=1.0), TrainConfig(mixup=0.4, cutmix=1.0)):
        view = train_hooks(config, num_classes=10).view
        x2, targets = view(KEY, None, None, x, y)
        assert x2.shape == x.shape and not np.array_equal(np.asarray(x2), np.asarray(x))
        assert targets.shape == (16, 10)
        np.testing.assert_allclose(np.asarray(targets.sum(-1)), 1.0, rtol=1e-5)
        again, _ = view(KEY, None, None, x, y)
        np.testing.assert_array_equal(np.asarray(again), np.asarray(x2))


def test_an_augmentation_spec_and_a_callable_both_change_the_inputs(digits):
    x, y = _batch(digits)
    for augment in ("noise=0.1", lambda key, a: a + 1.0):
        x2, targets = train_hooks(TrainConfig(augment=augment), num_classes=10).view(KEY, None, None, x, y)
        assert not np.array_equal(np.asarray(x2), np.asarray(x))
        assert targets is y  # labels stay integers when nothing mixes or smooths them


def test_pgd_inputs_stay_within_epsilon_and_the_data_range_and_raise_the_loss(digits):
    apply_fn, params = plain_mlp()
    x, y = _batch(digits, 64)
    config = TrainConfig(adversarial="pgd", epsilon=0.1, adversarial_steps=3)
    view = train_hooks(config, num_classes=10, data_range=(0.0, 1.0)).view
    adv, _ = view(KEY, apply_fn, params, x, y)
    assert float(jnp.max(jnp.abs(adv - x))) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    loss = hamjax.distill.cross_entropy
    assert float(loss(apply_fn(params, adv), y)) > float(loss(apply_fn(params, x), y))
    fgsm = train_hooks(TrainConfig(adversarial="fgsm", epsilon=0.1), num_classes=10, data_range=(0.0, 1.0)).view
    assert float(jnp.max(jnp.abs(fgsm(KEY, apply_fn, params, x, y)[0] - x))) <= 0.1 + 1e-6


def test_the_step_adds_the_penalty_and_drop_connect_changes_the_loss(digits):
    apply_fn, params = plain_mlp()
    x, y = _batch(digits, 64)
    opt = optax.sgd(0.0)

    def first_metrics(config):
        step = make_train_step(apply_fn, opt, hooks=train_hooks(config, num_classes=10))
        state = TrainState(jax.tree.map(jnp.array, params), opt.init(params), jnp.asarray(0, jnp.int32))
        return step(state, x, y)[1]

    plain, penalised, dropped = (
        first_metrics(TrainConfig()),
        first_metrics(TrainConfig(l1=1e-3, l2=1e-2)),
        first_metrics(TrainConfig(drop_connect=0.5)),
    )
    expected = hamjax.regularize.elastic_net(params, l1=1e-3, l2=1e-2)
    np.testing.assert_allclose(float(penalised["penalty"]), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(penalised["loss"]), float(plain["loss"]), rtol=1e-6)  # loss is without it
    assert "penalty" not in plain
    assert abs(float(dropped["loss"]) - float(plain["loss"])) > 1e-4


def test_fit_with_every_hook_trains_a_linen_model_and_reports_what_it_used(digits):
    module = _LinenMLP()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    apply_fn, params = hamjax.linen_functional(module, variables)
    config = TrainConfig(
        epochs=4,
        batch_size=64,
        learning_rate=1e-2,
        augment="shift=1,noise=0.02",
        label_smoothing=0.1,
        mixup=0.2,
        l1=1e-5,
        l2=1e-4,
        spectral=1e-3,
        drop_connect=0.1,
        clip_norm=1.0,
        accumulate=2,
    )
    result = fit(apply_fn, params, digits, config, progress=False)
    assert result.history[-1]["val_accuracy"] > 0.5
    joined = ", ".join(result.notes)
    for phrase in ("augment shift=1", "label smoothing 0.1", "mixup 0.2", "elastic net", "spectral norm 0.001"):
        assert phrase in joined
    assert "DropConnect 0.1" in joined and "accumulate 2" in joined and "clip norm 1" in joined


@pytest.mark.slow
def test_adversarial_fit_raises_robust_accuracy(digits):
    apply_fn, params = plain_mlp()
    base = TrainConfig(epochs=6, batch_size=64, learning_rate=3e-3)
    plain = fit(apply_fn, params, digits, base, progress=False).params
    robust = fit(
        apply_fn,
        params,
        digits,
        TrainConfig(epochs=6, batch_size=64, learning_rate=3e-3, adversarial="pgd", epsilon=0.1, adversarial_steps=3),
        progress=False,
    ).params

    def pgd_accuracy(p):
        return hamjax.regularize.robust_accuracy(apply_fn, p, digits.test, epsilon=0.1, steps=5)

    assert pgd_accuracy(robust) > pgd_accuracy(plain) + 0.05
