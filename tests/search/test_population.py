import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from members import batches, make, mlp

from hamjax.search import population as pop
from hamjax.search import trainer as trainer_module


def test_a_diverging_member_gets_minus_inf_and_does_not_poison_the_others():
    params = pop.init(make, jax.random.key(2), 4)
    xs, ys = batches()
    bad = jax.tree.map(lambda a: a.at[2].set(jnp.nan), params)
    trainer = pop.Population(mlp)
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


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pop.stack([]), "population size must be >= 1"),
        (lambda: pop.init(make, jax.random.key(0), 0), "init: population_size must be an integer >= 1, got 0"),
        (lambda: pop.size({"a": jnp.ones((3, 2)), "b": jnp.ones((4,))}), "same leading member axis"),
        (lambda: pop.member({"a": jnp.ones((3, 2))}, 3), r"member: i must be an integer in \[-3, 2\], got 3"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_population_reexports_the_trainer():
    for name in ("Population", "PopulationState", "size", "EXECUTIONS", "HYPERPARAMETERS", "DISTILL_DEFAULTS"):
        assert getattr(pop, name) is getattr(trainer_module, name), name


def test_replace_diverged_refuses_when_all_diverged():
    trainer = pop.Population(mlp)
    state = trainer.init(pop.init(make, jax.random.key(0), 2))
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


def test_exploit_copies_the_best_whole_and_keeps_hyperparameters_in_range():
    params = pop.init(make, jax.random.key(7), 8)
    trainer = pop.Population(mlp)
    hp = {"learning_rate": jnp.linspace(1e-3, 8e-3, 8), "bits": jnp.full((8,), 16.0), "sparsity": jnp.full((8,), 0.9)}
    state, _ = trainer.train(trainer.init(params, hp), *batches())
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
    params = pop.init(make, jax.random.key(8), 4)
    params = jax.tree.map(lambda a: a.at[3].set(jnp.nan), params)  # the last member has diverged
    trainer = pop.Population(mlp)
    state = trainer.init(params, {"learning_rate": jnp.asarray([1e-2, 3e-3, 1e-3, 1e-2])})
    xs, ys = batches(steps=3, batch=16)
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
