"""parse: the grammar, the normalised name, the ops it runs (one warp for a geometric chain), bad specs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference_models import plain_mlp

from hamjax import augment
from hamjax._base import call_model
from hamjax.augment import Augmentation, parse
from hamjax.train import Objective, TrainState, make_train_step

KEY = jax.random.key(0)


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


@pytest.mark.parametrize(
    "spec, normal",
    [
        ("shift=2,rotate=10,cutout=8", "shift=2,rotate=10,cutout=8"),
        (" shift = 2.0 , scale=0.10 ", "shift=2,scale=0.1"),
        ("crop=4,noise=1e-2", "crop=4,noise=0.01"),
        ("randaugment=0.5", "randaugment=0.5"),
        ("ops=3,randaugment=0.5", "randaugment=0.5,ops=3"),
        ("randaugment=1,ops=2", "randaugment=1"),
    ],
)
def test_parse_normalises_and_names_itself(spec, normal):
    augmentation = parse(spec)
    assert isinstance(augmentation, Augmentation)
    assert repr(augmentation) == str(augmentation) == augmentation.__name__ == augmentation.spec == normal
    assert parse(normal) == augmentation and hash(parse(normal)) == hash(augmentation)
    assert parse(augmentation) is augmentation
    assert Augmentation.__name__ == "Augmentation"
    with pytest.raises(dataclasses.FrozenInstanceError):
        augmentation.num_ops = 4


@pytest.mark.parametrize("spec", [None, "", "  "])
def test_nothing_to_parse_is_none(spec):
    assert parse(spec) is None


@pytest.mark.parametrize(
    "spec, op",
    [
        ("shift=2", lambda k, x: augment.shift(k, x, 2.0)),
        ("crop=3", lambda k, x: augment.crop(k, x, 3)),
        ("rotate=20", lambda k, x: augment.rotate(k, x, 20.0)),
        ("scale=0.2", lambda k, x: augment.scale(k, x, 0.2)),
        ("cutout=4", lambda k, x: augment.cutout(k, x, 4.0)),
        ("noise=0.1", lambda k, x: augment.noise(k, x, 0.1)),
        ("randaugment=0.4,ops=3", lambda k, x: augment.randaugment(k, x, 0.4, 3)),
    ],
)
def test_one_item_is_its_operation_with_the_first_folded_key(spec, op):
    x = _images((4, 10, 10, 1))
    np.testing.assert_allclose(
        np.asarray(parse(spec)(KEY, x)), np.asarray(op(jax.random.fold_in(KEY, 0), x)), atol=1e-6
    )


def test_geometric_items_compose_into_one_warp_then_the_rest_follow_in_order():
    x = _images((4, 10, 10))
    y = parse("shift=1,rotate=15,scale=0.2,cutout=3,noise=0.05")(KEY, x)
    n, keys = 4, [jax.random.fold_in(KEY, i) for i in range(5)]
    matrices = (
        augment.shift_matrices(keys[0], n, 1.0)
        @ augment.rotate_matrices(keys[1], n, (10, 10), 15.0)
        @ augment.scale_matrices(keys[2], n, (10, 10), 0.2)
    )
    want = augment.noise(keys[4], augment.cutout(keys[3], augment.warp(x, matrices), 3.0), 0.05)
    assert y.shape == x.shape
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), atol=1e-5)
    # one warp is close to warping step by step, away from the border
    steps = augment.scale(keys[2], augment.rotate(keys[1], augment.shift(keys[0], x[..., None], 1.0), 15.0), 0.2)
    fused = parse("shift=1,rotate=15,scale=0.2")(KEY, x[..., None])
    assert np.abs(np.asarray(fused - steps))[:, 3:7, 3:7].max() < 0.35


def test_an_augmentation_is_jittable_vmappable_and_static():
    augmentation = parse("crop=2,rotate=10,cutout=4")
    x = _images((3, 8, 8, 2))
    keys = jax.random.split(KEY, 3)
    batched = jax.vmap(lambda k: augmentation(k, x))(keys)
    run = jax.jit(lambda a, k: a(k, x), static_argnums=0)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(run(augmentation, keys[i])), atol=1e-6)
    assert jax.jit(augmentation)(KEY, x).shape == x.shape


def test_a_training_step_of_a_plain_model_augments_with_the_steps_key(digits):
    apply_fn, params = plain_mlp()
    augmentation = parse("shift=1,rotate=10,noise=0.05")

    def loss(apply_fn, params, x, y, *, rng, frozen, batch, opt_state):
        view_key, mix_key = jax.random.split(rng)
        x, targets = augment.mixup(mix_key, augmentation(view_key, x), augment.soft_targets(y, 10, 0.1), 0.4)
        logits, new_params = call_model(apply_fn, params, x, train=True, rng=rng)
        return optax.softmax_cross_entropy(logits, targets).mean(), (logits, new_params, {})

    optimizer = optax.adam(1e-2)
    step = make_train_step(apply_fn, optimizer, objective=Objective(loss))
    state = TrainState(params, optimizer.init(params), jnp.asarray(0, jnp.int32))
    x, y = jnp.asarray(digits.train.x[:128]), jnp.asarray(digits.train.y[:128])
    accuracy = lambda p: float(jnp.mean(jnp.argmax(apply_fn(p, x), -1) == y))  # noqa: E731
    before = accuracy(state.params)
    for _ in range(40):
        state, metrics = step(state, x, y)
    assert np.isfinite(float(metrics["loss"]))
    assert before < 0.3 and accuracy(state.params) > 0.8


@pytest.mark.parametrize(
    "spec, phrase",
    [
        ("flip=1", "parse('flip=1'): unknown augmentation 'flip' in 'flip=1'; expected one of"),
        ("shift=1,shift=2", "parse('shift=1,shift=2'): shift appears more than once"),
        ("rotate=ten", "parse('rotate=ten'): rotate must be a number, got 'ten'"),
        ("rotate=270", "parse('rotate=270'): rotate must be a finite number >= 0 and <= 180, got 270.0"),
        ("shift=-1", "parse('shift=-1'): shift must be a finite number >= 0"),
        ("scale=1", "parse('scale=1'): scale must be a finite number >= 0 and < 1"),
        ("cutout=-4", "parse('cutout=-4'): cutout must be"),
        ("noise=nan", "parse('noise=nan'): noise must be a finite number >= 0"),
        ("randaugment=2", "parse('randaugment=2'): randaugment must be a finite number >= 0 and <= 1"),
        ("crop=1.5", "parse('crop=1.5'): crop must be an integer, got '1.5'"),
        ("crop=-1", "parse('crop=-1'): crop must be an integer >= 0"),
        ("randaugment=0.5,ops=0", "parse('randaugment=0.5,ops=0'): ops must be an integer >= 1"),
        ("shift=1,ops=2", "ops sets randaugment's operations per example, but there is no randaugment item"),
        ("shift", "parse('shift'): item 'shift' must read name=value"),
        ("shift=1,,rotate=2", "item '' must read name=value"),
        ("shift=", "item 'shift=' must read name=value"),
    ],
)
def test_bad_specs_are_refused_in_one_line_naming_the_spec_and_item(spec, phrase):
    with pytest.raises(ValueError) as info:
        parse(spec)
    assert phrase in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_a_spec_that_is_not_a_string_is_refused():
    with pytest.raises(ValueError, match="parse: spec must be a string"):
        parse(3)
    with pytest.raises(ValueError, match="augmentation 'shift=2': x must be a floating array"):
        parse("shift=2")(KEY, jnp.zeros((2, 4, 4), jnp.int32))
