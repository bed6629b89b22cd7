import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference_models import plain_mlp

import hamjax
from hamjax.train import TrainConfig, TrainState, fit, make_train_step
from hamjax.train_config import clip_by_leaf_norm, config_record, configure_optimizer, make_optimizer


def _subset(ds, n):
    """``ds`` with its first ``n`` training examples, so batch sizes divide the split evenly."""
    train = hamjax.data.Split(ds.train.x[:n], ds.train.y[:n])
    return ds._replace(train=train)


def _relative(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-12))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_four_micro_batches_make_the_update_of_one_four_times_larger_batch(digits):
    apply_fn, params = plain_mlp()
    big_opt = configure_optimizer(optax.adam(1e-2), TrainConfig())
    micro_opt = configure_optimizer(optax.adam(1e-2), TrainConfig(accumulate=4))
    big_step, micro_step = make_train_step(apply_fn, big_opt), make_train_step(apply_fn, micro_opt)
    big = TrainState(jax.tree.map(jnp.array, params), big_opt.init(params), jnp.asarray(0, jnp.int32))
    micro = TrainState(jax.tree.map(jnp.array, params), micro_opt.init(params), jnp.asarray(0, jnp.int32))
    x, y = digits.train.x, digits.train.y
    for update in range(9):  # 9 batches of 128 from the 1,258 digits
        rows = slice(128 * update, 128 * (update + 1))
        big, _ = big_step(big, x[rows], y[rows])
        for part in range(4):
            start = 128 * update + 32 * part
            micro, _ = micro_step(micro, x[start : start + 32], y[start : start + 32])
    assert int(micro.count) == 36
    assert _relative(micro.params, big.params) <= 1e-5
    assert _relative(micro.params, params) > 1e-2  # the updates were applied


def test_fit_with_accumulation_equals_fit_on_the_larger_batch_and_resumes_mid_accumulation(tmp_path, digits):
    ds = _subset(digits, 1024)  # 8 batches of 128, 32 micro-batches of 32: the same rows in the same order
    apply_fn, params = plain_mlp()
    base = TrainConfig(epochs=2, learning_rate=3e-3, warmup_steps=4)
    big = fit(apply_fn, params, ds, dataclasses.replace(base, batch_size=128), progress=False)
    config = dataclasses.replace(base, batch_size=32, accumulate=4, checkpoint_every=5)
    micro = fit(apply_fn, params, ds, config, progress=False)
    assert _relative(micro.state.params, big.state.params) <= 1e-5
    assert [h["step"] for h in micro.history] == [32, 64]

    class Stop(Exception):
        pass

    def stop_at_7(step, state, metrics):
        if step == 7:
            raise Stop

    with pytest.raises(Stop):
        fit(apply_fn, params, ds, config, checkpoint_dir=str(tmp_path), progress=False, callback=stop_at_7)
    resumed = fit(apply_fn, params, ds, config, checkpoint_dir=str(tmp_path), progress=False)
    assert resumed.resumed_from == 5  # one micro-batch into the second accumulation
    chex.assert_trees_all_equal(resumed.state.params, micro.state.params)


def test_global_clipping_bounds_the_first_sgd_update():
    opt = configure_optimizer(optax.sgd(1.0), TrainConfig(clip_norm=0.5))
    params = {"a": jnp.zeros(3), "b": jnp.zeros(4)}
    grads = {"a": jnp.full(3, 10.0), "b": jnp.full(4, -10.0)}
    updates, _ = opt.update(grads, opt.init(params), params)
    norm = optax.tree.norm(updates)
    assert abs(float(norm) - 0.5) < 1e-6


def test_per_leaf_clipping_clips_each_leaf_to_its_own_norm():
    opt = configure_optimizer(optax.sgd(1.0), TrainConfig(clip_leaf_norm=1.0))
    params = {"big": jnp.zeros(2), "small": jnp.zeros(2)}
    updates, _ = opt.update({"big": jnp.array([6.0, 8.0]), "small": jnp.array([0.3, 0.4])}, opt.init(params), params)
    np.testing.assert_allclose(updates["big"], [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(updates["small"], [-0.3, -0.4], rtol=1e-6)
    traced = jax.jit(lambda c, g: clip_by_leaf_norm(c).update(g, optax.EmptyState())[0])(
        jnp.float32(5.0), {"g": jnp.array([6.0, 8.0])}
    )
    np.testing.assert_allclose(traced["g"], [3.0, 4.0], rtol=1e-6)


def test_the_schedule_spans_the_updates_not_the_micro_batches():
    schedule_of = {}
    for k in (1, 4):
        config = TrainConfig(learning_rate=1.0, warmup_steps=2, accumulate=k)
        opt = make_optimizer(config, total_steps=40)
        state, update = opt.init({"w": jnp.zeros(1)}), jax.jit(opt.update)
        lrs = []
        for _ in range(40 // k):
            with jax.numpy_dtype_promotion("standard"):  # optax's schedule mixes a Python float and its int32 count
                updates, state = update({"w": jnp.ones(1)}, state)
            lrs.append(float(-updates["w"][0]))
        schedule_of[k] = lrs
    assert len(schedule_of[4]) == 10 and schedule_of[4][2] > 0.99  # warm-up over 2 of 10 updates
    assert schedule_of[4][-1] < 0.05  # decayed by the 10th update
    assert schedule_of[1][9] > 0.9  # without accumulation the 10th update is a quarter of the way


def test_a_checkpoint_of_an_older_config_without_the_new_fields_still_resumes(tmp_path, digits):
    from hamjax import checkpoint

    apply_fn, params = plain_mlp()
    config = TrainConfig(epochs=1, batch_size=64)
    fit(apply_fn, params, digits, config, checkpoint_dir=str(tmp_path), progress=False)
    optimizer = make_optimizer(config, 1)
    like = {"state": TrainState(params, optimizer.init(params), jnp.asarray(0, jnp.int32)), "best_params": params}
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        step, tree, meta = ckpt.restore_latest(like)
        older = {k: v for k, v in meta["config"].items() if k in ("epochs", "batch_size", "learning_rate", "seed")}
        ckpt.save(step, tree, {**meta, "config": older})  # as a version without the newer fields wrote it
    assert fit(apply_fn, params, digits, config, checkpoint_dir=str(tmp_path), progress=False).resumed_from == step


def test_config_record_is_json_with_a_callable_augmentation_by_repr():
    def my_augment(key, x):
        return x

    record = config_record(TrainConfig(augment=my_augment))
    assert "my_augment" in record["augment"] and record["epochs"] == 10


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"accumulate": 0}, "accumulate must be an integer >= 1"),
        ({"clip_norm": 0.0}, "clip_norm must be a finite number > 0"),
        ({"clip_leaf_norm": -1.0}, "clip_leaf_norm must be a finite number > 0"),
        ({"label_smoothing": 1.0}, "label_smoothing must be a finite number >= 0 and < 1"),
        ({"mixup": -0.2}, "mixup must be a finite number >= 0"),
        ({"cutmix": float("nan")}, "cutmix must be a finite number >= 0"),
        ({"epsilon": -0.1}, "epsilon must be a finite number >= 0"),
        ({"adversarial": "pgd"}, "adversarial='pgd' needs epsilon > 0"),
        ({"adversarial": "cw", "epsilon": 0.1}, "adversarial"),
        ({"adversarial_steps": 0}, "adversarial_steps must be an integer >= 1"),
        ({"drop_connect": 1.0}, "drop_connect must be a finite number >= 0 and < 1"),
        ({"l1": -1e-4}, "l1 must be a finite number >= 0"),
        ({"data_parallel": "yes"}, "data_parallel must be True or False"),
        ({"augment": 3}, "augment must be None, a spec string"),
    ],
)
def test_bad_fields_are_refused_by_name(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(")) as info:
        TrainConfig(**kwargs)
    assert str(info.value).startswith("TrainConfig: ")
