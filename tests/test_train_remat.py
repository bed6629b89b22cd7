"""fit with TrainConfig(remat=...): the same training in less memory, resumable, its step's memory reported."""

import chex
import jax
import numpy as np
import optax
import pytest
from reference_models import plain_mlp

import hamjax
from hamjax.train import REMAT_POLICIES, TrainConfig, fit, make_train_step

# SGD: Adam turns the float noise of a gradient that is zero (a bias before a batch norm) into full steps
CONFIG = TrainConfig(epochs=1, batch_size=64, learning_rate=0.05, optimizer="sgd")


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def cnn():
    return hamjax.functional(hamjax.models.build("cnn", input_shape=(8, 8, 1), channels=(8, 16), dense=(32,)))


def test_remat_trains_to_the_same_params_and_reports_the_step_memory(cnn, digits):
    apply_fn, params = cnn
    plain = fit(apply_fn, params, digits, CONFIG, progress=False)
    remat = fit(apply_fn, params, digits, TrainConfig(**{**vars(CONFIG), "remat": "full"}), progress=False)
    chex.assert_trees_all_close(remat.params, plain.params, rtol=1e-4, atol=1e-6)  # batch statistics too
    assert remat.history[-1]["val_accuracy"] == pytest.approx(plain.history[-1]["val_accuracy"], abs=0.01)
    for result in (plain, remat):
        memory = result.step_memory
        if memory is not None:  # the CPU backend reports it
            assert memory.temp_bytes > 0 and memory.argument_bytes > 0 and memory.alias_bytes > 0  # state donated
            assert memory.total_bytes == (
                memory.argument_bytes + memory.output_bytes + memory.temp_bytes - memory.alias_bytes
            )


def test_a_run_killed_under_remat_resumes_to_the_uninterrupted_result(tmp_path, digits):
    apply_fn, params = plain_mlp()
    config = TrainConfig(epochs=2, batch_size=64, learning_rate=3e-3, checkpoint_every=5, remat="full")
    straight = fit(apply_fn, params, digits, config, progress=False)

    def kill(step, state, metrics):
        if step == 12:
            raise _Killed

    with pytest.raises(_Killed):
        fit(apply_fn, params, digits, config, checkpoint_dir=str(tmp_path), progress=False, callback=kill)
    # remat changes memory, not results: the run may resume under another policy
    resumed = fit(
        apply_fn,
        params,
        digits,
        TrainConfig(**{**vars(config), "remat": "dots"}),
        checkpoint_dir=str(tmp_path),
        progress=False,
    )
    assert resumed.resumed_from == 10
    chex.assert_trees_all_close(resumed.params, straight.params, rtol=1e-5, atol=1e-6)


def test_an_unknown_policy_is_refused_naming_the_ones_there_are(digits):
    with pytest.raises(ValueError, match=r"TrainConfig: remat must be one of \('none', 'full'.*got 'sqrt'"):
        TrainConfig(remat="sqrt")
    with pytest.raises(ValueError, match="make_train_step: remat must be one of"):
        make_train_step(lambda p, x: x @ p, optax.sgd(0.1), remat="all")
    assert REMAT_POLICIES == hamjax.graph.REMAT_POLICIES


def test_the_training_step_kind_takes_a_policy():
    recipe = hamjax.recipes.validate({"name": "r", "steps": [{"kind": "train", "remat": "dots"}]})
    assert recipe.steps[0].params["remat"] == "dots"
    with pytest.raises(hamjax.recipes.RecipeError, match="remat"):
        hamjax.recipes.validate({"name": "r", "steps": [{"kind": "train", "remat": "sqrt"}]})


def test_compiled_memory_reads_the_plan_without_running():
    memory = hamjax.measure.compiled_memory(lambda a: (a @ a).sum(), np.ones((64, 64), np.float32))
    if memory is not None:
        assert (memory.argument_bytes, memory.output_bytes) == (64 * 64 * 4, 4)
    donated = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    memory = hamjax.measure.compiled_memory(donated, np.ones((64, 64), np.float32))
    if memory is not None:
        assert memory.alias_bytes == 64 * 64 * 4 and memory.total_bytes == 64 * 64 * 4 + memory.temp_bytes
