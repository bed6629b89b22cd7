import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_models import plain_mlp

import hamjax
from hamjax.train import TrainConfig, evaluate, fit

FAST = TrainConfig(epochs=4, batch_size=64, learning_rate=3e-3)


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(64)(x)))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(10)(x)


def _three_kinds():
    nnx_pair = hamjax.functional(hamjax.models.build("cnn", input_shape=(8, 8, 1), channels=(8, 16), dense=(32,)))
    model = _LinenMLP()
    linen_pair = hamjax.linen_functional(model, model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1))))
    return {"nnx": nnx_pair, "linen": linen_pair, "plain": plain_mlp()}


@pytest.mark.parametrize("kind", ["nnx", "linen", "plain"])
def test_all_three_kinds_of_model_train(kind, digits):
    apply_fn, params = _three_kinds()[kind]
    before = evaluate(apply_fn, params, digits.test)["accuracy"]
    result = fit(apply_fn, params, digits, FAST, progress=False)
    after = evaluate(apply_fn, result.params, digits.test)["accuracy"]
    assert before < 0.3 and after > 0.85, (before, after)
    assert len(result.history) == FAST.epochs
    if kind != "plain":
        assert "batch_stats" in result.params
        assert not np.allclose(
            jax.tree.leaves(result.params["batch_stats"])[0], jax.tree.leaves(params["batch_stats"])[0]
        )


def test_fit_is_deterministic_for_a_seed_and_differs_across_seeds(digits):
    apply_fn, params = plain_mlp()
    cfg = TrainConfig(epochs=1, batch_size=64)
    a = fit(apply_fn, params, digits, cfg, progress=False).params
    b = fit(apply_fn, params, digits, cfg, progress=False).params
    c = fit(apply_fn, params, digits, TrainConfig(epochs=1, batch_size=64, seed=1), progress=False).params
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a["w1"], c["w1"])
    # the caller's params survive buffer donation
    chex.assert_tree_all_finite(params)


def test_early_stopping_returns_the_best_params(digits):
    apply_fn, params = plain_mlp()
    cfg = TrainConfig(epochs=50, batch_size=64, learning_rate=1e-9, eval_every=2, patience=2)
    result = fit(apply_fn, params, digits, cfg, progress=False)
    assert result.stopped_early
    assert len(result.history) == 3  # the first validation is the best; two more without improvement
    assert result.best_step == 2
    assert int(result.state.count) == 6


def test_bad_config_and_data_are_named():
    with pytest.raises(ValueError, match=r"TrainConfig: epochs must be an integer >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="TrainConfig: optimizer must be one of"):
        TrainConfig(optimizer="rmsprop9")
    with pytest.raises(ValueError, match=r"TrainConfig: patience must be an integer >= 1, got 0"):
        TrainConfig(patience=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", float("inf"), "TrainConfig: learning_rate must be a finite number > 0, got inf"),
        ("learning_rate", float("nan"), "TrainConfig: learning_rate must be a finite number > 0, got nan"),
        ("epochs", "5", "TrainConfig: epochs must be an integer >= 1, got '5'"),
        ("epochs", 2.5, "TrainConfig: epochs must be an integer >= 1, got 2.5"),
        ("batch_size", True, "TrainConfig: batch_size must be an integer >= 1, got True"),
        ("weight_decay", -1e-4, "TrainConfig: weight_decay must be a finite number >= 0, got -0.0001"),
        ("warmup_steps", -1, "TrainConfig: warmup_steps must be an integer >= 0, got -1"),
        ("eval_every", 1.5, "TrainConfig: eval_every must be an integer >= 1, got 1.5"),
        ("seed", 0.5, "TrainConfig: seed must be an integer, got 0.5"),
        ("loss_scale", "always", "TrainConfig: loss_scale must be one of .*, got 'always'"),
    ],
)
def test_config_refuses_a_bad_field_in_one_line_naming_it(field, value, message):
    with pytest.raises(ValueError, match=message) as err:
        TrainConfig(**{field: value})
    assert "\n" not in str(err.value)


def test_config_holds_plain_python_values():
    cfg = TrainConfig(epochs=np.int64(2), learning_rate=1, weight_decay=np.float32(0.5), seed=np.int32(3))
    assert (cfg.epochs, cfg.learning_rate, cfg.weight_decay, cfg.seed) == (2, 1.0, 0.5, 3)
    assert type(cfg.epochs) is int and type(cfg.learning_rate) is float and type(cfg.seed) is int


def test_batch_larger_than_the_split_is_refused(digits):
    apply_fn, params = plain_mlp()
    with pytest.raises(ValueError, match="fit: TrainConfig.batch_size=100000 exceeds"):
        fit(apply_fn, params, digits, TrainConfig(batch_size=100000), progress=False)


def test_weight_decay_and_warmup_optimizers_train(digits):
    apply_fn, params = plain_mlp()
    for opt, lr in (("adamw", 3e-3), ("sgd", 0.5), ("momentum", 0.1)):
        cfg = TrainConfig(epochs=3, batch_size=64, optimizer=opt, learning_rate=lr, weight_decay=1e-4, warmup_steps=5)
        result = fit(apply_fn, params, digits, cfg, progress=False)
        assert result.history[-1]["val_accuracy"] > 0.7, opt


_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import jax
    import hamjax
    from hamjax.train import TrainConfig, fit

    ckpt, kill_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ds = hamjax.data.load("digits", seed=0)
    apply_fn, params = hamjax.functional(
        hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10), dropout_rate=0.2))
    cfg = TrainConfig(epochs=3, batch_size=64, checkpoint_every=7, eval_every=11, patience=50)

    def callback(step, state, metrics):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = fit(apply_fn, params, ds, cfg, checkpoint_dir=ckpt if ckpt != "-" else None,
                 progress=False, callback=callback)
    leaves = jax.tree.leaves((result.params, result.state))
    np.savez(out, resumed=-1 if result.resumed_from is None else result.resumed_from,
             *[np.asarray(jax.random.key_data(l)) if jax.dtypes.issubdtype(l.dtype, jax.dtypes.prng_key)
               else np.asarray(l) for l in leaves])
    """
)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.path.dirname(os.path.dirname(hamjax.__file__))}

    def run(ckpt, kill_at, out):
        return subprocess.run(
            [sys.executable, str(script), ckpt, str(kill_at), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    straight = run("-", -1, tmp_path / "straight.npz")
    assert straight.returncode == 0, straight.stderr
    ckpt = tmp_path / "ckpt"
    killed = run(str(ckpt), 17, tmp_path / "never.npz")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.npz").exists()
    resumed = run(str(ckpt), -1, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert int(b["resumed"]) == 14  # the last checkpoint before the kill at step 17
    assert int(a["resumed"]) == -1
    keys = [k for k in a.files if k != "resumed"]
    assert keys and len(keys) == len(b.files) - 1
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("seconds, epochs_kept", [(3600.0, [3]), (0.0, [2, 3])])
def test_epoch_checkpoints_wait_for_checkpoint_seconds_and_the_last_step_is_kept(
    tmp_path, digits, seconds, epochs_kept
):
    apply_fn, params = plain_mlp()
    cfg = TrainConfig(epochs=3, batch_size=64, checkpoint_seconds=seconds)  # the newest 2 are kept
    expected = [epoch * hamjax.data.steps_per_epoch(len(digits.train.y), 64) for epoch in epochs_kept]
    fit(apply_fn, params, digits, cfg, checkpoint_dir=str(tmp_path), progress=False)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == expected
    other = dataclasses.replace(cfg, checkpoint_seconds=1.0)  # checkpoint timing does not change results
    assert (
        fit(apply_fn, params, digits, other, checkpoint_dir=str(tmp_path), progress=False).resumed_from == expected[-1]
    )


def test_resuming_with_another_config_is_refused(tmp_path, digits):
    apply_fn, params = plain_mlp()
    fit(apply_fn, params, digits, TrainConfig(epochs=1, batch_size=64), checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="written with config"):
        fit(
            apply_fn, params, digits, TrainConfig(epochs=2, batch_size=32), checkpoint_dir=str(tmp_path), progress=False
        )


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path, digits):
    apply_fn, params = plain_mlp()
    path = tmp_path / "ckpt"
    path.write_text("not a directory")
    steps = []
    with pytest.raises(ValueError, match="fit: checkpoint_dir must be a directory, got the regular file"):
        fit(
            apply_fn,
            params,
            digits,
            FAST,
            checkpoint_dir=str(path),
            progress=False,
            callback=lambda *a: steps.append(a),
        )
    assert steps == [] and path.read_text() == "not a directory"


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path, digits):
    apply_fn, params = plain_mlp()
    cfg = TrainConfig(epochs=1, batch_size=64, checkpoint_every=5)
    ckpt = tmp_path / "ckpt"
    straight = fit(apply_fn, params, digits, cfg, checkpoint_dir=str(ckpt), progress=False)
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert len(steps) == 2
    for array_file in (ckpt / str(steps[1]) / "tree").rglob("*"):
        if array_file.is_file() and array_file.parent.name == "d":
            array_file.write_bytes(array_file.read_bytes()[:10])
    with pytest.warns(RuntimeWarning, match=f"skipped the checkpoint at step {steps[1]} "):
        resumed = fit(apply_fn, params, digits, cfg, checkpoint_dir=str(ckpt), progress=False)
    assert resumed.resumed_from == steps[0]
    chex.assert_trees_all_equal(resumed.params, straight.params)
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == steps


def _bad_data_cases(ds):
    """``(dataset, phrase)`` pairs: every bad dataset ``fit`` must refuse before compiling."""
    split = hamjax.data.Split
    nan_x = ds.val.x.copy()
    nan_x[3, 0, 0, 0] = np.nan
    many = ds._replace(num_classes=12)
    return [
        (
            (ds.train.x, ds.train.y),
            "fit: dataset must be a hamjax.data.Dataset, got a tuple of 2 items; "
            "make one with hamjax.data.from_arrays(x, y)",
        ),
        (
            {"x": ds.train.x, "y": ds.train.y},
            "fit: dataset must be a hamjax.data.Dataset, got a dict with keys ['x', 'y']",
        ),
        (
            ds._replace(train=split(ds.train.x, ds.train.y[:-1])),
            f"fit: dataset.train.x and dataset.train.y must have the same length, got {len(ds.train.y)} and {len(ds.train.y) - 1}",
        ),
        (
            ds._replace(train=split(ds.train.x[:-1], ds.train.y)),
            f"fit: dataset.train.x and dataset.train.y must have the same length, got {len(ds.train.y) - 1} and {len(ds.train.y)}",
        ),
        (ds._replace(val=split(nan_x, ds.val.y)), "fit: dataset.val.x holds 1 non-finite values (NaN or inf)"),
        (
            ds._replace(train=split(ds.train.x, ds.train.y.astype(np.float32))),
            "fit: dataset.train.y must hold integer class labels, got dtype float32 (whole numbers); cast them with y.astype(np.int32)",
        ),
        (
            ds._replace(train=split(ds.train.x, np.where(np.arange(len(ds.train.y)) == 5, -1, ds.train.y))),
            "fit: dataset.train.y holds label -1 at index 5; expected labels >= 0",
        ),
        (
            ds._replace(val=split(ds.val.x, np.where(np.arange(len(ds.val.y)) == 2, 10, ds.val.y))),
            "fit: dataset.val.y holds label 10 at index 2; expected labels in [0, 10) for dataset.num_classes=10",
        ),
        (
            many._replace(train=split(ds.train.x, np.where(np.arange(len(ds.train.y)) == 0, 11, ds.train.y))),
            "fit: dataset.train.y holds label 11 at index 0; expected labels in [0, 10) for the model's 10 logits",
        ),
        (
            ds._replace(val=split(ds.val.x[:0], ds.val.y[:0])),
            "fit: dataset.val.x and dataset.val.y hold no examples; expected at least 1",
        ),
        (
            ds._replace(train=split(ds.train.x[:0], ds.train.y[:0])),
            "fit: dataset.train.x and dataset.train.y hold no examples; expected at least 1",
        ),
    ]


def test_fit_refuses_bad_data_before_compiling(digits):
    apply_fn, params = plain_mlp()
    traced = []

    def counting(p, x):
        traced.append(x.shape)
        return apply_fn(p, x)

    for dataset, phrase in _bad_data_cases(digits):
        traced.clear()
        with pytest.raises(ValueError, match=re.escape(phrase)):
            fit(counting, params, dataset, FAST, progress=False)
        assert all(shape[0] == 1 for shape in traced), phrase  # at most the one-row logit count, no train step


def test_evaluate_refuses_bad_splits(digits):
    apply_fn, params = plain_mlp()
    split = hamjax.data.Split
    with pytest.raises(
        ValueError,
        match=re.escape(
            "evaluate: split must be a hamjax.data.Split, got a tuple of 2 items; pass dataset.val, or hamjax.data.Split(x, y)"
        ),
    ):
        evaluate(apply_fn, params, (digits.val.x, digits.val.y))
    with pytest.raises(
        ValueError, match=re.escape("evaluate: split.x and split.y hold no examples; expected at least 1")
    ):
        evaluate(apply_fn, params, split(digits.val.x[:0], digits.val.y[:0]))
    with pytest.raises(
        ValueError, match=re.escape("evaluate: split.x and split.y must have the same length, got 5 and 4")
    ):
        evaluate(apply_fn, params, split(digits.val.x[:5], digits.val.y[:4]))
    nan_x = digits.val.x[:4].copy()
    nan_x[0] = np.inf
    with pytest.raises(ValueError, match=re.escape("evaluate: split.x holds 64 non-finite values (NaN or inf) of 256")):
        evaluate(apply_fn, params, split(nan_x, digits.val.y[:4]))
    labels = np.array([0, 10, 1, 2], np.int32)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "evaluate: split.y holds label 10 at index 1; expected labels in [0, 10) for the model's 10 logits"
        ),
    ):
        evaluate(apply_fn, params, split(digits.val.x[:4], labels))
    with pytest.raises(ValueError, match=re.escape("expected labels in [0, 2) for num_classes=2")):
        evaluate(apply_fn, params, split(digits.val.x[:4], labels % 3), num_classes=2)
    with pytest.raises(
        ValueError, match=re.escape("evaluate: split.y must hold integer class labels, got dtype float64")
    ):
        evaluate(apply_fn, params, split(digits.val.x[:4], np.array([0.5, 1.0, 2.0, 3.0])))
