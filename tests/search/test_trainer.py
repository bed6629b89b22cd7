"""Tests for hamjax.search.trainer: Population trains every member at once, with per-member hyperparameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from members import alone, batches, make, mlp, teacher_trainer

import hamjax
from hamjax.search import population as pop


@pytest.mark.parametrize("execution", ["vmap", "chunked", "sequential"])
def test_every_member_trains_as_if_alone(execution):
    params = pop.init(make, jax.random.key(0), 4)
    lrs = jnp.asarray([1e-3, 3e-3, 1e-2, 3e-2])
    trainer = pop.Population(mlp, execution=execution, chunk=3)
    xs, ys = batches()
    state, losses = trainer.train(trainer.init(params, {"learning_rate": lrs}), xs, ys)
    assert losses.shape == (4, 4) and int(state.count) == 4
    for i in range(4):
        want_params, want_losses = alone(pop.member(params, i), float(lrs[i]), xs, ys)
        np.testing.assert_allclose(losses[i], want_losses, rtol=1e-5, atol=1e-6)
        for got, want in zip(jax.tree.leaves(pop.member(state.params, i)), jax.tree.leaves(want_params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_zero_learning_rate_member_does_not_move_and_caller_params_survive():
    params = pop.init(make, jax.random.key(1), 3)
    before = jax.tree.map(np.asarray, params)
    trainer = pop.Population(mlp)
    state, _ = trainer.train(trainer.init(params, {"learning_rate": jnp.asarray([0.0, 1e-2, 1e-2])}), *batches())
    np.testing.assert_array_equal(pop.member(state.params, 0)["w1"], before["w1"][0])
    assert not np.allclose(pop.member(state.params, 1)["w1"], before["w1"][1])
    np.testing.assert_array_equal(params["w1"], before["w1"])  # the state was donated, not the caller's arrays


def test_auto_times_the_executions_and_keeps_the_fastest():
    params = pop.init(make, jax.random.key(3), 4)
    trainer = pop.Population(mlp, execution="auto", chunk=2)
    state = trainer.init(params)
    state, losses = trainer.train(state, *batches())
    assert trainer.chosen in pop.EXECUTIONS[1:] and set(trainer.timings) == set(pop.EXECUTIONS[1:])
    assert losses.shape == (4, 4) and int(state.count) == 4


def test_reference_models_train_as_a_population(digits):
    module = hamjax.models.build("cnn", input_shape=digits.input_shape, num_classes=digits.num_classes)
    apply_fn, variables = hamjax.functional(module)
    params = pop.stack([variables, jax.tree.map(lambda a: a * 0.5, variables)])
    trainer = pop.Population(apply_fn)
    x = digits.train.x[:64].reshape(2, 32, *digits.input_shape)
    y = digits.train.y[:64].reshape(2, 32)
    state, losses = trainer.train(trainer.init(params, {"learning_rate": 1e-3}), x, y)
    assert losses.shape == (2, 2) and np.all(np.isfinite(losses))
    before, after = (
        jax.tree.leaves(variables["batch_stats"]),
        jax.tree.leaves(pop.member(state.params, 0)["batch_stats"]),
    )
    assert any(not np.allclose(a, b) for a, b in zip(after, before, strict=True))  # train mode updated them
    metrics = trainer.evaluate(state, digits.test.x[:50], digits.test.y[:50])
    assert metrics["accuracy"].shape == (2,)


def test_per_member_sparsity_holds_exactly_after_every_call_and_zero_sparsity_changes_nothing():
    params = pop.init(make, jax.random.key(4), 3)
    sparsity = jnp.asarray([0.0, 0.5, 0.9])
    trainer = pop.Population(mlp)
    xs, ys = batches()
    state, _ = trainer.train(trainer.init(params, {"learning_rate": 1e-2, "sparsity": sparsity}), xs, ys)
    plain, _ = trainer.train(trainer.init(params, {"learning_rate": 1e-2}), xs, ys)
    for i, s in enumerate(np.asarray(sparsity)):
        m = pop.member(state.params, i)
        for name in ("w1", "w2"):
            zeros = int(np.sum(np.asarray(m[name]) == 0))
            assert zeros == int(np.floor(np.float32(s) * m[name].size)), (i, name, zeros)
        assert not np.any(np.asarray(m["b1"]) == 0)  # b1 is (1, 16) but added, not a weight: pruning leaves it
    for got, want in zip(
        jax.tree.leaves(pop.member(state.params, 0)), jax.tree.leaves(pop.member(plain.params, 0)), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_per_member_bits_train_and_score_the_fake_quantized_model():
    params = pop.init(make, jax.random.key(5), 3)
    bits = jnp.asarray([2.0, 4.0, 8.0])
    trainer = pop.Population(mlp)
    xs, ys = batches()
    state, losses = trainer.train(trainer.init(params, {"learning_rate": 1e-2, "bits": bits}), xs, ys)
    for i, b in enumerate([2, 4, 8]):
        t = hamjax.quant.fake_quant_weights(b)
        start = pop.member(params, i)
        q0, _ = t.apply(start, t.init(start))
        np.testing.assert_allclose(losses[i, 0], hamjax.distill.cross_entropy(mlp(q0, xs[0]), ys[0]), rtol=1e-5)
        trained = pop.member(state.params, i)
        q, _ = t.apply(trained, t.init(trained))
        assert not np.array_equal(q["w1"], trained["w1"])  # the float weights are kept and updated, not snapped
        want = np.mean(np.argmax(mlp(q, xs[1]), -1) == ys[1])
        assert float(trainer.evaluate(state, xs[1], ys[1])["accuracy"][i]) == pytest.approx(want)
    assert np.all(np.isfinite(losses)) and losses[0, 0] != losses[2, 0]


def test_per_member_temperature_and_alpha_distill_from_the_teacher():
    params = pop.init(make, jax.random.key(6), 3)
    trainer = teacher_trainer()
    temperature, alpha = jnp.asarray([1.0, 4.0, 8.0]), jnp.asarray([0.0, 0.5, 0.9])
    xs, ys = batches()
    state = trainer.init(params, {"temperature": temperature, "alpha": alpha})
    assert set(state.hparams) == {"learning_rate", "weight_decay", "temperature", "alpha"}
    _, losses = trainer.train(state, xs, ys)
    teacher_logits = mlp(trainer.teacher[1], xs[0])
    for i in range(3):
        logits = mlp(pop.member(params, i), xs[0])
        soft = hamjax.distill.soft_target_loss(logits, teacher_logits, temperature=float(temperature[i]))
        want = alpha[i] * soft + (1 - alpha[i]) * hamjax.distill.cross_entropy(logits, ys[0])
        np.testing.assert_allclose(losses[i, 0], want, rtol=1e-5)
    defaults = teacher_trainer().init(params)
    np.testing.assert_array_equal(defaults.hparams["temperature"], np.full(3, pop.DISTILL_DEFAULTS["temperature"]))


def test_sparsity_and_bits_train_a_reference_model_with_batch_statistics(digits):
    module = hamjax.models.build("cnn", input_shape=digits.input_shape, num_classes=digits.num_classes)
    apply_fn, variables = hamjax.functional(module)
    params = pop.stack([variables, variables])
    trainer = pop.Population(apply_fn)
    x = digits.train.x[:64].reshape(2, 32, *digits.input_shape)
    y = digits.train.y[:64].reshape(2, 32)
    hp = {"learning_rate": 1e-3, "sparsity": jnp.asarray([0.25, 0.75]), "bits": jnp.asarray([8.0, 4.0])}
    state, losses = trainer.train(trainer.init(params, hp), x, y)
    assert np.all(np.isfinite(losses))
    for i, s in enumerate((0.25, 0.75)):
        m = pop.member(state.params, i)
        assert hamjax.prune.sparsity_of(m) == pytest.approx(s, abs=0.01)
        stats, start = jax.tree.leaves(m["batch_stats"]), jax.tree.leaves(variables["batch_stats"])
        assert any(not np.allclose(a, b) for a, b in zip(stats, start, strict=True))


def _image_member(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"]


def test_per_member_augmentation_magnitude_and_label_smoothing(digits):
    import optax

    w = 0.1 * jax.random.normal(jax.random.key(0), (64, 10), jnp.float32)
    params = pop.stack([{"w": w}] * 3)
    trainer = pop.Population(_image_member)
    x = digits.train.x[:96].reshape(3, 32, *digits.input_shape)
    y = digits.train.y[:96].reshape(3, 32)
    hp = {
        "learning_rate": 1e-2,
        "augment": jnp.asarray([0.0, 0.5, 0.0]),
        "label_smoothing": jnp.asarray([0.0, 0.0, 0.2]),
    }
    state, losses = trainer.train(trainer.init(params, hp), x, y)
    plain, plain_losses = trainer.train(trainer.init(params, {"learning_rate": 1e-2}), x, y)
    np.testing.assert_allclose(losses[0], plain_losses[0], rtol=1e-5)  # magnitude 0 and no smoothing: as plain
    np.testing.assert_allclose(pop.member(state.params, 0)["w"], pop.member(plain.params, 0)["w"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(pop.member(state.params, 1)["w"], pop.member(plain.params, 1)["w"])  # augmented views
    logits = _image_member({"w": w}, jnp.asarray(x[0]))
    smoothed = optax.smooth_labels(jax.nn.one_hot(y[0], 10), 0.2)
    want = optax.softmax_cross_entropy(logits, smoothed).mean()
    np.testing.assert_allclose(losses[2, 0], want, rtol=1e-5)
    assert abs(float(losses[2, 0]) - float(losses[0, 0])) > 1e-3


def _alone_scheduled(params, schedule, xs, ys):
    """One member trained alone with optax adamw on ``schedule`` (a function of the step count)."""
    import optax

    opt = optax.adamw(schedule, weight_decay=0.0)
    state = opt.init(params)
    for x, y in zip(xs, ys, strict=True):
        grads = jax.grad(lambda p, x=x, y=y: hamjax.distill.cross_entropy(mlp(p, x), y))(params)
        with jax.numpy_dtype_promotion("standard"):  # optax's adamw promotes implicitly (decay ** int32 count)
            updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.slow  # 8 s a case; test_a_refilled_member_warms_up_from_its_own_first_step keeps warm-up in the default run
@pytest.mark.parametrize("execution", ["vmap", "sequential"])
def test_per_member_warmup_and_cosine_decay_match_optax_schedules_alone(execution):
    params = pop.init(make, jax.random.key(5), 4)
    lr, warm, decay = 1e-2, [0, 1, 3, 2], [0, 0, 0, 6]
    trainer = pop.Population(mlp, execution=execution)
    xs, ys = batches(steps=6)
    hp = {"learning_rate": lr, "warmup_steps": jnp.asarray(warm), "decay_steps": jnp.asarray(decay)}
    state = trainer.init(params, hp)
    state, _ = trainer.train(state, xs[:2], ys[:2])  # two calls: the schedule follows each member's own count
    state, _ = trainer.train(state, xs[2:], ys[2:])
    for i, (w, d) in enumerate(zip(warm, decay, strict=True)):

        def schedule(t, w=w, d=d):
            t = jnp.asarray(t, jnp.float32)
            scale = jnp.minimum(1.0, (t + 1) / w) if w else 1.0
            if d:
                scale = scale * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip((t - w) / (d - w), 0.0, 1.0)))
            return lr * scale

        want = _alone_scheduled(pop.member(params, i), schedule, xs, ys)
        for got, ref in zip(jax.tree.leaves(pop.member(state.params, i)), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_a_refilled_member_warms_up_from_its_own_first_step():
    from hamjax.tune import slots

    trainer = pop.Population(mlp)
    xs, ys = batches()
    params = pop.init(make, jax.random.key(6), 2)
    state, _ = trainer.train(trainer.init(params, {"learning_rate": 1e-2, "warmup_steps": 4}), xs, ys)
    fresh = trainer.init(params, {"learning_rate": 1e-2, "warmup_steps": 4})
    state = slots.scatter(state, np.asarray([1, 2]), fresh)  # fresh member 0 into slot 1: its count starts at 0
    state, _ = trainer.train(state, xs, ys)
    alone_state, _ = trainer.train(trainer.init(params, {"learning_rate": 1e-2, "warmup_steps": 4}), xs, ys)
    np.testing.assert_allclose(pop.member(state.params, 1)["w1"], pop.member(alone_state.params, 0)["w1"], rtol=1e-5)


@pytest.mark.slow  # 9 s
def test_per_member_mixup_reuses_the_augment_numerics_and_zero_is_off():
    params = pop.init(make, jax.random.key(7), 3)
    trainer = pop.Population(mlp)
    xs, ys = batches(steps=1)
    hp = {"learning_rate": 1e-2, "mixup": jnp.asarray([0.0, 0.4, 0.0]), "label_smoothing": jnp.asarray([0, 0, 0.1])}
    _, losses = trainer.train(trainer.init(params, hp), xs, ys)
    _, plain = trainer.train(trainer.init(params, {"learning_rate": 1e-2}), xs, ys)
    np.testing.assert_allclose(losses[0], plain[0], rtol=1e-5)  # strength 0: the plain batch
    # member 1: the batch and rows hamjax.augment.mixup makes with the step's key (fold_in(key(0), 0), then 1)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 1)
    x, t = hamjax.augment.mixup(key, jnp.asarray(xs[0]), jax.nn.one_hot(ys[0], 3), jnp.float32(0.4))
    want = hamjax.distill.cross_entropy(mlp(pop.member(params, 1), x), t)
    np.testing.assert_allclose(losses[1, 0], want, rtol=1e-5)
    assert abs(float(losses[1, 0]) - float(plain[1, 0])) > 1e-4


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"augment": 1.5}), r"augment .* in \[0, 1\]"),
        (
            lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"label_smoothing": 1.0}),
            r"label_smoothing .* in \[0, 1\)",
        ),
        (lambda: pop.Population(mlp, execution="pmap"), "Population: execution must be one of"),
        (lambda: pop.Population(mlp, chunk=0), "Population: chunk must be an integer >= 1, got 0"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"momentum": 0.9}), "unknown hyperparameters"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"learning_rate": jnp.ones(2)}), r"shape \(3,\)"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"learning_rate": -1.0}), "finite and >= 0"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"sparsity": 1.0}), r"sparsity .* in \[0, 1\)"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"bits": 3.5}), "bits .* an integer in"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"bits": 1}), "bits .* an integer in"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"temperature": 2.0}), "need Population.teacher"),
        (lambda: pop.Population(mlp, teacher=(mlp,)), "teacher must be a"),
        (lambda: teacher_trainer().init({"w": jnp.ones((3, 2))}, {"temperature": 0.0}), "temperature .* > 0"),
        (lambda: teacher_trainer().init({"w": jnp.ones((3, 2))}, {"alpha": 1.5}), r"alpha .* in \[0, 1\]"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"warmup_steps": 2.5}), "warmup_steps .* integer"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"decay_steps": -1}), "decay_steps .* integer"),
        (lambda: pop.Population(mlp).init({"w": jnp.ones((3, 2))}, {"mixup": -0.2}), "mixup .* >= 0"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _trainer_and_state():
    trainer = pop.Population(lambda p, x: x @ p["w"])
    return trainer, trainer.init({"w": jnp.zeros((2, 4, 3))})


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"xs": np.full((2, 8, 4), np.nan, np.float32)}, r"Population\.train: xs holds \d+ non-finite values"),
        ({"ys": np.full((2, 8), 0.5, np.float32)}, r"Population\.train: ys must hold integer class labels"),
        (
            {"ys": np.full((2, 8), -1, np.int32)},
            r"Population\.train: ys holds label -1 at index 0; expected labels >= 0",
        ),
        (
            {"ys": np.full((2, 8), 3, np.int32)},
            r"ys holds label 3 at index 0; expected labels in \[0, 3\) for the model's 3",
        ),
    ],
)
def test_bad_data_is_refused_before_training(bad, match):
    trainer, state = _trainer_and_state()
    data = {"xs": np.ones((2, 8, 4), np.float32), "ys": np.zeros((2, 8), np.int32), **bad}
    with pytest.raises(ValueError, match=match):
        trainer.train(state, data["xs"], data["ys"])
    assert "vmap" not in trainer._compiled  # refused before the training step was built
    with pytest.raises(ValueError, match=match.replace("train", "evaluate").replace("xs", "x").replace("ys", "y")):
        trainer.evaluate(state, data["xs"][0], data["ys"][0])


def test_a_loss_of_ones_own_takes_labels_that_are_not_classes():
    trainer = pop.Population(lambda p, x: x @ p["w"], loss_fn=lambda logits, y: jnp.mean((logits[:, 0] - y) ** 2))
    state = trainer.init({"w": jnp.zeros((2, 4, 3))})
    state, losses = trainer.train(state, np.ones((2, 8, 4), np.float32), np.full((2, 8), 7.5, np.float32))
    assert losses.shape == (2, 2) and np.all(np.isfinite(losses))


def test_train_epochs_matches_train_then_evaluate_per_epoch():
    params = pop.init(make, jax.random.key(2), 3)
    hp = {"learning_rate": jnp.asarray([1e-3, 1e-2, 3e-2])}
    trainer = pop.Population(mlp)
    xs, ys = batches()
    x, y = np.asarray(xs).reshape(-1, *xs.shape[2:]), np.asarray(ys).reshape(-1)
    index = np.arange(len(y)).reshape(2, 2, -1)  # two epochs of two steps
    state, losses, scores = trainer.train_epochs(trainer.init(params, hp), x, y, index, x[:5], y[:5], eval_rows=2)
    assert losses.shape == (3, 2, 2) and scores["accuracy"].shape == (3, 2) and int(state.count) == 4
    want = trainer.init(params, hp)
    for epoch in range(2):
        want, want_losses = trainer.train(want, x[index[epoch]], y[index[epoch]])
        np.testing.assert_allclose(losses[:, epoch], want_losses, rtol=1e-5, atol=1e-6)
        for name, value in trainer.evaluate(want, x[:5], y[:5]).items():
            np.testing.assert_allclose(scores[name][:, epoch], value, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"Population\.train_epochs: index must be"):
        trainer.train_epochs(state, x, y, index + len(y), x[:5], y[:5])
