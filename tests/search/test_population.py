import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax.search import population as pop


def _mlp(p, x):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return h @ p["w2"]


def _make(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": 0.5 * jax.random.normal(k1, (6, 16)),
        "b1": jnp.zeros((1, 16)),
        "w2": 0.5 * jax.random.normal(k2, (16, 3)),
    }


def _batches(steps=4, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(steps, batch, 6)).astype(np.float32)
    ys = rng.integers(0, 3, size=(steps, batch)).astype(np.int32)
    return xs, ys


def _alone(params, lr, xs, ys):
    """One member trained alone with plain optax adamw: the reference."""
    import optax

    opt = optax.adamw(lr, weight_decay=0.0)
    state = opt.init(params)
    losses = []
    for x, y in zip(xs, ys, strict=True):
        value, grads = jax.value_and_grad(lambda p, x=x, y=y: hamjax.train.cross_entropy(_mlp(p, x), y))(params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(value)
    return params, np.asarray(losses)


@pytest.mark.parametrize("execution", ["vmap", "chunked", "sequential"])
def test_every_member_trains_as_if_alone(execution):
    params = pop.init(_make, jax.random.key(0), 4)
    lrs = jnp.asarray([1e-3, 3e-3, 1e-2, 3e-2])
    trainer = pop.Population(_mlp, execution=execution, chunk=3)
    xs, ys = _batches()
    state, losses = trainer.train(trainer.init(params, {"learning_rate": lrs}), xs, ys)
    assert losses.shape == (4, 4) and int(state.step) == 4
    for i in range(4):
        want_params, want_losses = _alone(pop.member(params, i), float(lrs[i]), xs, ys)
        np.testing.assert_allclose(losses[i], want_losses, rtol=1e-5, atol=1e-6)
        for got, want in zip(jax.tree.leaves(pop.member(state.params, i)), jax.tree.leaves(want_params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_a_zero_learning_rate_member_does_not_move_and_caller_params_survive():
    params = pop.init(_make, jax.random.key(1), 3)
    before = jax.tree.map(np.asarray, params)
    trainer = pop.Population(_mlp)
    state, _ = trainer.train(trainer.init(params, {"learning_rate": jnp.asarray([0.0, 1e-2, 1e-2])}), *_batches())
    np.testing.assert_array_equal(pop.member(state.params, 0)["w1"], before["w1"][0])
    assert not np.allclose(pop.member(state.params, 1)["w1"], before["w1"][1])
    np.testing.assert_array_equal(params["w1"], before["w1"])  # the state was donated, not the caller's arrays


def test_a_diverging_member_gets_minus_inf_and_does_not_poison_the_others():
    params = pop.init(_make, jax.random.key(2), 4)
    xs, ys = _batches()
    bad = jax.tree.map(lambda a: a.at[2].set(jnp.nan), params)
    trainer = pop.Population(_mlp)
    lr = {"learning_rate": jnp.full((4,), 1e-2)}
    clean, _ = trainer.train(trainer.init(params, lr), xs, ys)
    poisoned, losses = trainer.train(trainer.init(bad, lr), xs, ys)
    assert np.all(np.isnan(losses[2])) and np.all(np.isfinite(np.delete(np.asarray(losses), 2, axis=0)))
    for i in (0, 1, 3):
        np.testing.assert_array_equal(pop.member(poisoned.params, i)["w2"], pop.member(clean.params, i)["w2"])
    scores = trainer.evaluate(poisoned, xs[0], ys[0])["accuracy"]
    fit = pop.fitness(poisoned.params, scores)
    assert fit[2] == -np.inf and np.all(np.isfinite(np.delete(np.asarray(fit), 2)))
    state, source = pop.replace_diverged(jax.random.key(0), poisoned, fit)
    assert source[2] != 2 and list(np.delete(np.asarray(source), 2)) == [0, 1, 3]
    np.testing.assert_array_equal(pop.member(state.params, 2)["w1"], pop.member(poisoned.params, int(source[2]))["w1"])
    assert np.all(np.isfinite(pop.fitness(state.params, trainer.evaluate(state, xs[0], ys[0])["loss"])))


def test_auto_times_the_executions_and_keeps_the_fastest():
    params = pop.init(_make, jax.random.key(3), 4)
    trainer = pop.Population(_mlp, execution="auto", chunk=2)
    state = trainer.init(params)
    state, losses = trainer.train(state, *_batches())
    assert trainer.chosen in pop.EXECUTIONS[1:] and set(trainer.timings) == set(pop.EXECUTIONS[1:])
    assert losses.shape == (4, 4) and int(state.step) == 4


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


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pop.stack([]), "population size must be >= 1"),
        (lambda: pop.init(_make, jax.random.key(0), 0), "population size must be >= 1"),
        (lambda: pop.size({"a": jnp.ones((3, 2)), "b": jnp.ones((4,))}), "same leading member axis"),
        (lambda: pop.member({"a": jnp.ones((3, 2))}, 3), "out of range"),
        (lambda: pop.Population(_mlp, execution="pmap"), "execution must be one of"),
        (lambda: pop.Population(_mlp, chunk=0), "chunk must be >= 1"),
        (lambda: pop.Population(_mlp).init({"w": jnp.ones((3, 2))}, {"momentum": 0.9}), "unknown hyperparameters"),
        (lambda: pop.Population(_mlp).init({"w": jnp.ones((3, 2))}, {"learning_rate": jnp.ones(2)}), r"shape \(3,\)"),
        (lambda: pop.Population(_mlp).init({"w": jnp.ones((3, 2))}, {"learning_rate": -1.0}), "finite and >= 0"),
        (lambda: pop.Population(_mlp).init({"w": jnp.ones((3, 2))}, {"sparsity": 1.0}), r"sparsity .* in \[0, 1\)"),
        (lambda: pop.Population(_mlp).init({"w": jnp.ones((3, 2))}, {"bits": 3.5}), "bits .* an integer in"),
        (lambda: pop.Population(_mlp).init({"w": jnp.ones((3, 2))}, {"bits": 1}), "bits .* an integer in"),
        (lambda: pop.Population(_mlp).init({"w": jnp.ones((3, 2))}, {"temperature": 2.0}), "need Population.teacher"),
        (lambda: pop.Population(_mlp, teacher=(_mlp,)), "teacher must be a"),
        (lambda: _teacher_trainer().init({"w": jnp.ones((3, 2))}, {"temperature": 0.0}), "temperature .* > 0"),
        (lambda: _teacher_trainer().init({"w": jnp.ones((3, 2))}, {"alpha": 1.5}), r"alpha .* in \[0, 1\]"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_replace_diverged_refuses_when_all_diverged():
    trainer = pop.Population(_mlp)
    state = trainer.init(pop.init(_make, jax.random.key(0), 2))
    with pytest.raises(ValueError, match="every member diverged"):
        pop.replace_diverged(jax.random.key(0), state, jnp.full((2,), -jnp.inf))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        pop.replace_diverged(jax.random.key(0), state, jnp.zeros(3))


def test_sharded_over_eight_simulated_devices_matches_one_device():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from hamjax.search import population as pop
        assert len(jax.devices()) == 8
        f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
        make = lambda k: {"w": jax.random.normal(k, (6, 16)), "v": jax.random.normal(jax.random.fold_in(k, 1), (16, 3))}
        params = pop.init(make, jax.random.key(0), 16)
        xs = np.random.default_rng(0).normal(size=(3, 8, 6)).astype(np.float32)
        ys = np.random.default_rng(1).integers(0, 3, size=(3, 8)).astype(np.int32)
        trainer = pop.Population(f)
        hp = {"learning_rate": jnp.linspace(1e-3, 1e-2, 16)}
        plain, lp = trainer.train(trainer.init(params, hp), xs, ys)
        sharded = trainer.init(pop.shard(params), hp)
        assert len(sharded.params["w"].sharding.device_set) == 8
        out, ls = trainer.train(sharded, xs, ys)
        assert len(out.params["w"].sharding.device_set) == 8
        np.testing.assert_allclose(ls, lp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.params["w"], plain.params["w"], rtol=1e-5, atol=1e-6)
        try:
            pop.shard(pop.init(make, jax.random.key(0), 12))
        except ValueError as e:
            assert "not a multiple of the 8 devices" in str(e)
        else:
            raise AssertionError("expected a ValueError")
        print("ok")
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def _teacher_trainer():
    teacher = _make(jax.random.key(99))
    return pop.Population(_mlp, teacher=(_mlp, teacher))


def test_per_member_sparsity_holds_exactly_after_every_call_and_zero_sparsity_changes_nothing():
    params = pop.init(_make, jax.random.key(4), 3)
    sparsity = jnp.asarray([0.0, 0.5, 0.9])
    trainer = pop.Population(_mlp)
    xs, ys = _batches()
    state, _ = trainer.train(trainer.init(params, {"learning_rate": 1e-2, "sparsity": sparsity}), xs, ys)
    plain, _ = trainer.train(trainer.init(params, {"learning_rate": 1e-2}), xs, ys)
    for i, s in enumerate(np.asarray(sparsity)):
        m = pop.member(state.params, i)
        for name in ("w1", "b1", "w2"):  # b1 is (1, 16): a matrix to the default filter
            zeros = int(np.sum(np.asarray(m[name]) == 0))
            assert zeros == int(np.floor(np.float32(s) * m[name].size)), (i, name, zeros)
    for got, want in zip(
        jax.tree.leaves(pop.member(state.params, 0)), jax.tree.leaves(pop.member(plain.params, 0)), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_per_member_bits_train_and_score_the_fake_quantized_model():
    params = pop.init(_make, jax.random.key(5), 3)
    bits = jnp.asarray([2.0, 4.0, 8.0])
    trainer = pop.Population(_mlp)
    xs, ys = _batches()
    state, losses = trainer.train(trainer.init(params, {"learning_rate": 1e-2, "bits": bits}), xs, ys)
    for i, b in enumerate([2, 4, 8]):
        t = hamjax.quant.fake_quant_weights(b)
        start = pop.member(params, i)
        q0, _ = t.apply(start, t.init(start))
        np.testing.assert_allclose(losses[i, 0], hamjax.train.cross_entropy(_mlp(q0, xs[0]), ys[0]), rtol=1e-5)
        trained = pop.member(state.params, i)
        q, _ = t.apply(trained, t.init(trained))
        assert not np.array_equal(q["w1"], trained["w1"])  # the float weights are kept and updated, not snapped
        want = np.mean(np.argmax(_mlp(q, xs[1]), -1) == ys[1])
        assert float(trainer.evaluate(state, xs[1], ys[1])["accuracy"][i]) == pytest.approx(want)
    assert np.all(np.isfinite(losses)) and losses[0, 0] != losses[2, 0]


def test_per_member_temperature_and_alpha_distill_from_the_teacher():
    params = pop.init(_make, jax.random.key(6), 3)
    trainer = _teacher_trainer()
    temperature, alpha = jnp.asarray([1.0, 4.0, 8.0]), jnp.asarray([0.0, 0.5, 0.9])
    xs, ys = _batches()
    state = trainer.init(params, {"temperature": temperature, "alpha": alpha})
    assert set(state.hparams) == {"learning_rate", "weight_decay", "temperature", "alpha"}
    _, losses = trainer.train(state, xs, ys)
    teacher_logits = _mlp(trainer.teacher[1], xs[0])
    for i in range(3):
        logits = _mlp(pop.member(params, i), xs[0])
        soft = hamjax.distill.soft_target_loss(logits, teacher_logits, temperature=float(temperature[i]))
        want = alpha[i] * soft + (1 - alpha[i]) * hamjax.train.cross_entropy(logits, ys[0])
        np.testing.assert_allclose(losses[i, 0], want, rtol=1e-5)
    defaults = _teacher_trainer().init(params)
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


def test_exploit_copies_the_best_whole_and_keeps_hyperparameters_in_range():
    params = pop.init(_make, jax.random.key(7), 8)
    trainer = pop.Population(_mlp)
    hp = {"learning_rate": jnp.linspace(1e-3, 8e-3, 8), "bits": jnp.full((8,), 16.0), "sparsity": jnp.full((8,), 0.9)}
    state, _ = trainer.train(trainer.init(params, hp), *_batches())
    fit = jnp.arange(8.0)
    new, source = pop.exploit(jax.random.key(0), state, fit, factors=(1.5,))
    source = np.asarray(source)
    assert list(source[2:]) == [2, 3, 4, 5, 6, 7] and set(source[:2]) <= {6, 7}
    for i in (0, 1):
        j = int(source[i])
        np.testing.assert_array_equal(pop.member(new.params, i)["w1"], pop.member(state.params, j)["w1"])
        np.testing.assert_array_equal(
            new.opt_state.inner_state[0].mu["w1"][i], state.opt_state.inner_state[0].mu["w1"][j]
        )
        assert float(new.hparams["learning_rate"][i]) == pytest.approx(1.5 * float(state.hparams["learning_rate"][j]))
        assert float(new.hparams["bits"][i]) == 16.0 and float(new.hparams["sparsity"][i]) == pytest.approx(0.99)
    kept, _ = pop.exploit(jax.random.key(0), state, fit, perturb=["learning_rate"], factors=(0.5,))
    assert float(kept.hparams["sparsity"][0]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="cannot perturb"):
        pop.exploit(jax.random.key(0), state, fit, perturb=["temperature"])
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        pop.exploit(jax.random.key(0), state, jnp.zeros(3))


def test_train_pbt_moves_hyperparameters_and_survives_a_diverging_member():
    params = pop.init(_make, jax.random.key(8), 4)
    params = jax.tree.map(lambda a: a.at[3].set(jnp.nan), params)  # the last member has diverged
    trainer = pop.Population(_mlp)
    state = trainer.init(params, {"learning_rate": jnp.asarray([1e-2, 3e-3, 1e-3, 1e-2])})
    xs, ys = _batches(steps=3, batch=16)
    seen = []
    state, history = pop.train_pbt(
        trainer, state, jax.random.key(0), [(xs, ys)] * 3, (xs[0], ys[0]), on_round=lambda r, rec: seen.append(r)
    )
    assert seen == [0, 1, 2] and len(history) == 3 and history[-1]["source"] is None
    assert history[0]["accuracy"][3] == -np.inf and history[0]["source"][3] != 3
    assert history[1]["hparams"]["learning_rate"] != history[0]["hparams"]["learning_rate"]
    assert np.all(np.isfinite(history[-1]["accuracy"]))
    assert np.all(np.isfinite(jax.tree.leaves(state.params)[0]))
    with pytest.raises(ValueError, match="rounds is empty"):
        pop.train_pbt(trainer, state, jax.random.key(0), [], (xs[0], ys[0]))
