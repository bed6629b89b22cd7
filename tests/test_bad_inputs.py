"""A catalogue of bad inputs: each row is one bad call that must fail at once, clearly.

Every row gives the call (through the public Python API or ``hamjax.cli.main``),
the exception type, and a phrase the one-line message must contain; the phrase
names the argument at fault. No row trains: each must raise before any work.
"""

import json
import math
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference_models import plain_mlp

import hamjax
from hamjax import (
    autotune,
    checkpoint,
    cli,
    compilation,
    data,
    distill,
    graph,
    models,
    parallel,
    precision,
    prune,
    quant,
    recipes,
    train,
    tune,
)
from hamjax.autotune import selection, strategies
from hamjax.export.graph import ExportError
from hamjax.models import saved
from hamjax.search import proposals, trainer
from hamjax.tune import bookkeeping
from hamjax.tune import storage as tune_storage

INF, NAN = math.inf, math.nan
_CTX: dict = {}  # the `digits` dataset and a temporary folder, set by the test before each call


def _ds() -> data.Dataset:
    return _CTX["digits"]


def _tmp() -> Path:
    return _CTX["tmp"]


def _file(name="a-file", content=b"x") -> str:
    path = _tmp() / name
    path.write_bytes(content)
    return str(path)


def _mlp():
    return plain_mlp()


def _tokens(p, x):
    """Rows of a digit as 8 tokens, one marked block (graph.merge_tokens)."""
    from jax.ad_checkpoint import checkpoint_name

    x = x.reshape(x.shape[0], 8, 8)
    x = checkpoint_name(x + checkpoint_name(x @ p, "b/keys"), "b/merge")
    return checkpoint_name(x, "unmerge").mean(axis=1)


def _fit(dataset=None, config=None, **kw):
    apply_fn, params = _mlp()
    dataset = _ds() if dataset is None else dataset
    return hamjax.fit(apply_fn, params, dataset, config or train.TrainConfig(epochs=1), progress=False, **kw)


def _with_train(**kw):
    ds = _ds()
    return ds._replace(train=ds.train._replace(**kw))


def _nan_x():
    x = np.array(_ds().train.x)
    x[3] = np.nan
    return _with_train(x=x)


def _labels(y):
    return _with_train(y=y)


def _evaluate(split):
    apply_fn, params = _mlp()
    return train.evaluate(apply_fn, params, split)


def _params():
    return {"dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)}}


def _mlp_two(p, x):
    return jnp.tanh(x @ p["a"]) @ p["b"]


def _two():
    return {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}


def _two_groups():
    return prune.channel_groups(_mlp_two, _two(), jnp.ones((1, 3)))


def _dense_stack(p, x):
    """``_params()``'s dense layer applied twice: a model for rows whose arguments fail before it is traced."""
    h = jax.nn.relu(x @ p["dense"]["kernel"] + p["dense"]["bias"][None])
    return h @ p["dense"]["kernel"]


def _dense_group(prunable=True, reason=""):
    """``_params()``'s four dense outputs as one channel group, written by hand."""
    members = (prune.Member("['dense']['bias']", 0, 1, 0, 4, 0), prune.Member("['dense']['kernel']", 1, 1, 0, 4, 0))
    return prune.ChannelGroup(4, members, prunable, reason)


def _recipe(**step):
    return recipes.validate({"name": "r", "steps": [step]})


def _recipe_file(text: str | bytes, name="bad.toml") -> str:
    return _file(name, text if isinstance(text, bytes) else text.encode())


def _saved_model(tamper):
    module = models.build("mlp", input_shape=(8, 8, 1), sizes=(8, 10))
    _, params = hamjax.functional(module)
    config = models.config_of(module)
    path = saved.save(_tmp() / "saved", config, params)
    spec = json.loads((path / "model.json").read_text())
    tamper(spec)
    (path / "model.json").write_text(json.dumps(spec))
    return saved.load(path)


def _linked_out(name: str, *, folder: bool = False) -> Path:
    """An output folder whose ``name`` is a folder (``folder=True``) or a link to a folder outside it."""
    out = _tmp() / "out"
    out.mkdir()
    if folder:
        (out / name).mkdir()
    else:
        (_tmp() / "elsewhere").mkdir()
        (out / name).symlink_to(_tmp() / "elsewhere")
    return out


def _dense():
    import flax.linen as nn

    return nn.Dense(2)


def _dense_variables():
    return _dense().init(jax.random.key(0), jnp.ones((1, 3)))


def _nnx_linear():
    from flax import nnx

    return nnx.Linear(3, 2, rngs=nnx.Rngs(0))


def _linen_call(change):
    apply_fn, variables = hamjax.linen_functional(_dense(), _dense_variables())
    return apply_fn(change(variables), jnp.ones((1, 3)))


def _nnx_call(change):
    apply_fn, variables = hamjax.functional(_nnx_linear())
    return apply_fn(change(variables), jnp.ones((1, 3)))


def _optimize(recipe="default", apply_fn=None, params=None, dataset=None, **kw):
    if apply_fn is None:
        apply_fn, params = _mlp()
    return hamjax.optimize(apply_fn, params, _ds() if dataset is None else dataset, recipe, out=str(_tmp() / "o"), **kw)


def _tune(**kw):
    space = kw.pop("space", {"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}})
    kw = {"trials": 4, "batch": 2, "epochs": 1, "execution": "sequential", "progress": False, **kw}
    return tune.run(*_mlp(), _ds(), space, **kw)


def _tune_twice(**kw):
    url = f"sqlite:///{_tmp() / 'tune.db'}"
    _tune(trials=2, storage=url, study_name="bad")
    return _tune(trials=4, storage=url, study_name="bad", **kw)


def _cli(*argv):
    """A CLI call: its exit status, with ``@FILE`` a regular file and ``@BADRECIPE`` a recipe escaping --out."""

    def call() -> int:
        filled = []
        for a in argv:
            if a == "@FILE":
                a = _file()
            elif a == "@BADRECIPE":
                a = _recipe_file('name = "r"\n[[steps]]\nkind = "train"\nstage = "../x"\n')
            filled.append(a)
        try:
            return cli.main(filled)
        except SystemExit as exit_info:  # argparse's errors
            return exit_info.code

    return call


def _auto(dataset=None, **kw):
    """``optimize_auto`` of the plain MLP on digits; every row must fail before any candidate is measured."""
    apply_fn, params = plain_mlp()
    return autotune.optimize_auto(apply_fn, params, dataset or _ds(), **kw)


def _sensitivity(fn=None, *, cut_y=0, **kw):
    """``layer_sensitivity`` (or ``fn``) of the plain MLP on 20 digits, ``cut_y`` labels short."""
    apply_fn, params = plain_mlp()
    x, y = _ds().val.x[:20], _ds().val.y[: 20 - cut_y]
    return (fn or autotune.layer_sensitivity)(apply_fn, params, x, y, **kw)


# (id, call, exception type, phrase of the message)
CASES = [
    # the contract: functional and linen_functional
    (
        "linen_functional-none",
        lambda: hamjax.linen_functional(_dense(), None),
        TypeError,
        "variables must be a mapping",
    ),
    (
        "linen_functional-nnx",
        lambda: hamjax.linen_functional(_nnx_linear(), _dense_variables()),
        TypeError,
        "use hamjax.functional(module)",
    ),
    (
        "linen_functional-function",
        lambda: hamjax.linen_functional(lambda p, x: x, _dense_variables()),
        TypeError,
        "model must be a flax.linen.Module",
    ),
    (
        "linen-apply-extra-key",
        lambda: _linen_call(lambda v: {"params": {**v["params"], "foo": jnp.ones(2)}}),
        ValueError,
        "variables['params']['foo'] is not in the module",
    ),
    (
        "functional-missing-bias",
        lambda: _nnx_call(lambda v: {"params": {"kernel": v["params"]["kernel"]}}),
        ValueError,
        "variables['params']['bias'] is missing",
    ),
    (
        "functional-kernel-shape",
        lambda: _nnx_call(lambda v: {"params": {**v["params"], "kernel": jnp.ones((3, 4))}}),
        ValueError,
        "variables['params']['kernel'] has shape (3, 4); the module's is (3, 2)",
    ),
    ("functional-none", lambda: _nnx_call(lambda v: None), TypeError, "apply_fn: variables must be a mapping"),
    # hamjax.data.from_arrays / load_npz
    (
        "from_arrays-length",
        lambda: data.from_arrays(np.zeros((10, 3)), np.zeros(9, np.int32)),
        ValueError,
        "x and y must have the same length",
    ),
    (
        "from_arrays-nan",
        lambda: data.from_arrays(np.full((10, 3), NAN), np.zeros(10, np.int32)),
        ValueError,
        "x holds 30 non-finite values",
    ),
    (
        "from_arrays-float-labels",
        lambda: data.from_arrays(np.zeros((10, 3)), np.full(10, 0.5)),
        ValueError,
        "y must hold integer class labels",
    ),
    (
        "from_arrays-negative-labels",
        lambda: data.from_arrays(np.zeros((10, 3)), -np.ones(10, np.int32)),
        ValueError,
        "y holds label -1",
    ),
    (
        "from_arrays-labels-2d",
        lambda: data.from_arrays(np.zeros((10, 3)), np.zeros((10, 2), np.int32)),
        ValueError,
        "y must be 1-D",
    ),
    (
        "from_arrays-num-classes",
        lambda: data.from_arrays(np.zeros((10, 3)), np.arange(10) % 5, num_classes=3),
        ValueError,
        "for num_classes=3",
    ),
    (
        "from_arrays-val-fraction",
        lambda: data.from_arrays(np.zeros((10, 3)), np.arange(10) % 2, val_fraction=1.5),
        ValueError,
        "val_fraction must be a finite number > 0 and < 1",
    ),
    (
        "from_arrays-test-fraction",
        lambda: data.from_arrays(np.zeros((10, 3)), np.arange(10) % 2, test_fraction=-0.1),
        ValueError,
        "test_fraction must be a finite number > 0 and < 1",
    ),
    (
        "from_arrays-val-not-pair",
        lambda: data.from_arrays(np.zeros((10, 3)), np.arange(10) % 2, val=np.zeros(3)),
        ValueError,
        "val must be an (x, y) pair",
    ),
    (
        "from_arrays-x-scalar",
        lambda: data.from_arrays(np.float32(1.0), np.zeros(1, np.int32)),
        ValueError,
        "x must have at least 2 dims",
    ),
    (
        "from_arrays-seed",
        lambda: data.from_arrays(np.zeros((10, 3)), np.arange(10) % 2, seed="a"),
        ValueError,
        "seed must be an integer",
    ),
    ("load_npz-missing", lambda: data.load_npz(_tmp() / "missing.npz"), FileNotFoundError, "missing.npz"),
    ("load_npz-no-x", lambda: data.load_npz(_npz(y_train=np.zeros(4, np.int32))), ValueError, "x_train"),
    ("load_npz-not-npz", lambda: data.load_npz(_file("bad.npz", b"not a zip")), ValueError, "bad.npz"),
    # hamjax.fit / TrainConfig
    (
        "TrainConfig-learning_rate-inf",
        lambda: train.TrainConfig(learning_rate=INF),
        ValueError,
        "learning_rate must be a finite number > 0",
    ),
    (
        "TrainConfig-learning_rate-0",
        lambda: train.TrainConfig(learning_rate=0.0),
        ValueError,
        "learning_rate must be a finite number > 0",
    ),
    # TrainConfig: accumulation, clipping, mixing, adversarial training (issue 17)
    (
        "TrainConfig-accumulate-0",
        lambda: train.TrainConfig(accumulate=0),
        ValueError,
        "accumulate must be an integer >= 1",
    ),
    (
        "TrainConfig-clip_norm-0",
        lambda: train.TrainConfig(clip_norm=0.0),
        ValueError,
        "clip_norm must be a finite number > 0",
    ),
    (
        "TrainConfig-clip_leaf_norm-negative",
        lambda: train.TrainConfig(clip_leaf_norm=-1.0),
        ValueError,
        "clip_leaf_norm must be a finite number > 0",
    ),
    (
        "TrainConfig-mixup-negative",
        lambda: train.TrainConfig(mixup=-0.2),
        ValueError,
        "mixup must be a finite number >= 0",
    ),
    (
        "TrainConfig-cutmix-negative",
        lambda: train.TrainConfig(cutmix=-1),
        ValueError,
        "cutmix must be a finite number >= 0",
    ),
    (
        "TrainConfig-epsilon-negative",
        lambda: train.TrainConfig(epsilon=-0.1),
        ValueError,
        "epsilon must be a finite number >= 0",
    ),
    (
        "TrainConfig-adversarial_steps-0",
        lambda: train.TrainConfig(adversarial="pgd", epsilon=0.1, adversarial_steps=0),
        ValueError,
        "adversarial_steps must be an integer >= 1",
    ),
    (
        "TrainConfig-adversarial-without-epsilon",
        lambda: train.TrainConfig(adversarial="fgsm"),
        ValueError,
        "adversarial='fgsm' needs epsilon > 0",
    ),
    (
        "TrainConfig-label_smoothing-1",
        lambda: train.TrainConfig(label_smoothing=1.0),
        ValueError,
        "label_smoothing must be a finite number >= 0 and < 1",
    ),
    (
        "TrainConfig-augment-magnitude",
        lambda: train.TrainConfig(augment="rotate=400"),
        ValueError,
        "augment='rotate=400' is not an augmentation",
    ),
    (
        "TrainConfig-checkpoint_seconds-negative",
        lambda: train.TrainConfig(checkpoint_seconds=-1),
        ValueError,
        "checkpoint_seconds must be a finite number >= 0",
    ),
    ("TrainConfig-epochs-str", lambda: train.TrainConfig(epochs="5"), ValueError, "epochs must be an integer >= 1"),
    ("TrainConfig-epochs-float", lambda: train.TrainConfig(epochs=2.5), ValueError, "epochs must be an integer >= 1"),
    ("TrainConfig-epochs-0", lambda: train.TrainConfig(epochs=0), ValueError, "epochs must be an integer >= 1"),
    (
        "TrainConfig-batch_size-0",
        lambda: train.TrainConfig(batch_size=0),
        ValueError,
        "batch_size must be an integer >= 1",
    ),
    (
        "TrainConfig-optimizer",
        lambda: train.TrainConfig(optimizer="adamx"),
        ValueError,
        "optimizer must be one of ('adam', 'adamw', 'sgd', 'momentum')",
    ),
    (
        "TrainConfig-weight_decay",
        lambda: train.TrainConfig(weight_decay=-1.0),
        ValueError,
        "weight_decay must be a finite number >= 0",
    ),
    (
        "TrainConfig-warmup_steps",
        lambda: train.TrainConfig(warmup_steps=-1),
        ValueError,
        "warmup_steps must be an integer >= 0",
    ),
    ("TrainConfig-patience", lambda: train.TrainConfig(patience=0), ValueError, "patience must be an integer >= 1"),
    ("TrainConfig-precision", lambda: train.TrainConfig(precision="p=f99"), ValueError, "precision"),
    (
        "TrainConfig-loss_scale",
        lambda: train.TrainConfig(loss_scale="huge"),
        ValueError,
        "loss_scale must be one of ('auto', 'dynamic', 'none')",
    ),
    (
        "fit-tuple-dataset",
        lambda: _fit((_ds().train.x, _ds().train.y)),
        ValueError,
        "dataset must be a hamjax.data.Dataset",
    ),
    ("fit-config-dict", lambda: _fit(config={"epochs": 1}), ValueError, "fit: config must be a hamjax.TrainConfig"),
    ("fit-nan-inputs", lambda: _fit(_nan_x()), ValueError, "dataset.train.x holds 64 non-finite"),
    (
        "fit-labels-beyond",
        lambda: _fit(_labels(np.full(len(_ds().train.y), 10, np.int32))),
        ValueError,
        "dataset.train.y holds label 10",
    ),
    (
        "fit-labels-negative",
        lambda: _fit(_labels(-np.ones(len(_ds().train.y), np.int32))),
        ValueError,
        "dataset.train.y holds label -1",
    ),
    (
        "fit-float-labels",
        lambda: _fit(_labels(_ds().train.y.astype(np.float32))),
        ValueError,
        "dataset.train.y must hold integer",
    ),
    (
        "fit-x-longer",
        lambda: _fit(_labels(_ds().train.y[:-5])),
        ValueError,
        "dataset.train.x and dataset.train.y must have the same length, got 1258 and 1253",
    ),
    (
        "fit-x-shorter",
        lambda: _fit(_with_train(x=_ds().train.x[:-5])),
        ValueError,
        "dataset.train.x and dataset.train.y must have the same length, got 1253",
    ),
    (
        "fit-empty-val",
        lambda: _fit(_ds()._replace(val=_ds().val._replace(x=_ds().val.x[:0], y=_ds().val.y[:0]))),
        ValueError,
        "dataset.val.x and dataset.val.y hold no examples",
    ),
    ("fit-checkpoint_dir-file", lambda: _fit(checkpoint_dir=_file()), ValueError, "checkpoint_dir must be a directory"),
    # data parallel and multi-process training (hamjax.parallel)
    (
        "fit-parallel-type",
        lambda: _fit(parallel="gpu"),
        ValueError,
        "fit: parallel must be a hamjax.parallel.DataParallel",
    ),
    ("DataParallel-devices", lambda: parallel.DataParallel(devices=[]), ValueError, "devices must be a non-empty"),
    ("DataParallel-param_rule", lambda: parallel.DataParallel(param_rule=3), ValueError, "param_rule must be None or"),
    (
        "DataParallel-rule-spec",
        lambda: parallel.DataParallel(param_rule=lambda path, leaf: "batch").place({"w": jnp.ones((2, 2))}),
        ValueError,
        "param_rule returned 'batch' for ['w']; expected a jax.sharding.PartitionSpec",
    ),
    ("shard_by_size-device_count", lambda: parallel.shard_by_size(0), ValueError, "shard_by_size: device_count must"),
    (
        "initialize-address",
        lambda: parallel.initialize("127.0.0.1", 2, 1),
        ValueError,
        "initialize: coordinator_address must be 'host:port'",
    ),
    ("initialize-process_id", lambda: parallel.initialize("127.0.0.1:1234", 2, 2), ValueError, "process_id must be"),
    ("initialize-timeout", lambda: parallel.initialize("127.0.0.1:1234", 2, 1, timeout_s=0), ValueError, "timeout_s"),
    (
        "initialize-unreachable",
        lambda: parallel.initialize(f"127.0.0.1:{_free_port()}", 2, 1, timeout_s=0.5),
        ValueError,
        "did not accept a connection within 0.5 s",
    ),
    ("initialize-port-busy", lambda: _busy_coordinator(), ValueError, "the port is in use"),
    # train.evaluate
    (
        "evaluate-tuple",
        lambda: _evaluate((_ds().test.x, _ds().test.y)),
        ValueError,
        "split must be a hamjax.data.Split",
    ),
    (
        "evaluate-nan",
        lambda: _evaluate(_ds().test._replace(x=np.full_like(_ds().test.x, NAN))),
        ValueError,
        "split.x holds",
    ),
    (
        "evaluate-labels-beyond",
        lambda: _evaluate(_ds().test._replace(y=np.full_like(_ds().test.y, 99))),
        ValueError,
        "split.y holds label 99",
    ),
    (
        "evaluate-empty",
        lambda: _evaluate(_ds().test._replace(x=_ds().test.x[:0], y=_ds().test.y[:0])),
        ValueError,
        "split.x and split.y hold no examples",
    ),
    # prune
    (
        "magnitude_masks-sparsity-1",
        lambda: prune.magnitude_masks(_params(), 1.0),
        ValueError,
        "sparsity must be a scalar in [0, 1)",
    ),
    (
        "magnitude_masks-sparsity-negative",
        lambda: prune.magnitude_masks(_params(), -0.1),
        ValueError,
        "sparsity must be a scalar in [0, 1)",
    ),
    ("magnitude_masks-sparsity-str", lambda: prune.magnitude_masks(_params(), "a"), ValueError, "sparsity must be"),
    (
        "magnitude_masks-scope",
        lambda: prune.magnitude_masks(_params(), 0.5, scope="world"),
        ValueError,
        "scope must be one of ('layer', 'global')",
    ),
    ("nm_masks-n-over-m", lambda: prune.nm_masks(_params(), 4, 2), ValueError, "n must be <= m"),
    ("nm_masks-m-zero", lambda: prune.nm_masks(_params(), 0, 0), ValueError, "n must be an integer >= 1"),
    (
        "block_masks-block",
        lambda: prune.block_masks(_params(), 0.5, block=(0, 4)),
        ValueError,
        "block must be two integers >= 1",
    ),
    (
        "masked_optimizer-method",
        lambda: prune.masked_optimizer(optax.sgd(0.1), method="bogus"),
        ValueError,
        "method must be one of ('magnitude', 'global_magnitude', 'movement', None)",
    ),
    (
        "masked_optimizer-update_every",
        lambda: prune.masked_optimizer(optax.sgd(0.1), schedule=0.5, update_every=0),
        ValueError,
        "update_every must be an integer >= 1",
    ),
    (
        "polynomial_schedule-update_every-0",
        lambda: prune.polynomial_schedule(0.5, end_step=10, update_every=0),
        ValueError,
        "update_every must be an integer >= 1",
    ),
    (
        "polynomial_schedule-update_every-float",
        lambda: prune.polynomial_schedule(0.5, end_step=10, update_every=1.5),
        ValueError,
        "update_every must be an integer >= 1",
    ),
    (
        "polynomial_schedule-end_step",
        lambda: prune.polynomial_schedule(0.5, begin_step=10, end_step=5),
        ValueError,
        "end_step must be an integer >= 11",
    ),
    (
        "structured_masks-granularity",
        lambda: _structured("rows"),
        ValueError,
        "granularity must be one of ('neurons',) for a MLPConfig model",
    ),
    ("magnitude_prune-sparsity", lambda: prune.magnitude_prune(1.5), ValueError, "sparsity must be a scalar in [0, 1)"),
    # prune: the N:M axis, incompatible layers, block scores (issue 18)
    ("nm_masks-axis-float", lambda: prune.nm_masks(_params(), 2, 4, axis=0.5), ValueError, "axis must be an integer"),
    (
        "nm_masks-axis-out-of-range",
        lambda: prune.nm_masks(_params(), 2, 4, axis=-3),
        ValueError,
        "nm_masks: axis=-3 is out of range for ['dense']['kernel'], shape (4, 4)",
    ),
    (
        "nm_masks-incompatible",
        lambda: prune.nm_masks(_params(), 2, 4, incompatible="ignore"),
        ValueError,
        "incompatible must be one of ('raise', 'skip')",
    ),
    (
        "nm_masks-m-does-not-divide",
        lambda: prune.nm_masks(_params(), 1, 3),
        ValueError,
        "m=3 must divide axis -2 of ['dense']['kernel'], which has length 4",
    ),
    (
        "block_masks-score",
        lambda: prune.block_masks(_params(), 0.5, score="max"),
        ValueError,
        "score must be one of ('l2', 'mean')",
    ),
    (
        "recipe-prune-incompatible",
        lambda: _recipe(kind="prune", method="nm", incompatible="drop"),
        recipes.RecipeError,
        "steps[0].incompatible must be one of",
    ),
    (
        "recipe-prune-block_score",
        lambda: _recipe(kind="prune", method="block", block_score="l1"),
        recipes.RecipeError,
        "steps[0].block_score must be one of",
    ),
    # prune: channel groups from the jaxpr and their masks (issue 18)
    ("group_masks-sparsity-one", lambda: prune.group_masks(_params(), (), 1.0), ValueError, "sparsity must be"),
    (
        "group_masks-multiple-zero",
        lambda: prune.group_masks(_params(), (), 0.5, multiple=0),
        ValueError,
        "multiple must",
    ),
    ("group_masks-method", lambda: prune.group_masks(_params(), (), 0.5, method="l3"), ValueError, "method must be"),
    (
        "group_masks-foreign-group",
        lambda: prune.group_masks(
            _params(), [prune.ChannelGroup(2, (prune.Member("['x']", 0, 1, 0, 2, 0),), True, "")], 0.5
        ),
        ValueError,
        "group_masks: params has no leaf ['x']",
    ),
    # prune: kept channels per group (group_channels), scopes, methods and rounding (issue 18)
    (
        "group_channels-sparsity-negative",
        lambda: prune.group_channels(_params(), [_dense_group()], -0.1),
        ValueError,
        "group_channels: sparsity must be a scalar in [0, 1)",
    ),
    (
        "group_channels-method",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, method="snip"),
        ValueError,
        "group_channels: method must be one of ('l2', 'l1', 'taylor', 'random')",
    ),
    (
        "group_channels-scope",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, scope="model"),
        ValueError,
        "group_channels: scope must be one of ('layer', 'global')",
    ),
    (
        "group_masks-scope",
        lambda: prune.group_masks(_params(), [_dense_group()], 0.5, scope="all"),
        ValueError,
        "group_masks: scope must be one of",
    ),
    (
        "group_channels-multiple-zero",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, multiple=0),
        ValueError,
        "group_channels: multiple must be an integer >= 1",
    ),
    (
        "group_channels-multiple-larger-than-group",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, multiple=8),
        ValueError,
        "group_channels: multiple=8 is larger than the group of ['dense']['bias'] (4 channels)",
    ),
    (
        "group_channels-taylor-no-grads",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, method="taylor"),
        ValueError,
        "group_channels: method='taylor' needs grads=",
    ),
    (
        "group_channels-taylor-grads-mismatched",
        lambda: prune.group_channels(
            _params(), [_dense_group()], 0.5, method="taylor", grads={"dense": {"kernel": jnp.ones((2, 2)), "bias": 0}}
        ),
        ValueError,
        "group_channels: grads['dense']['bias'] has shape ()",
    ),
    (
        "group_channels-taylor-grads-missing-leaf",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, method="taylor", grads={"kernel": jnp.ones(4)}),
        ValueError,
        "group_channels: grads has no leaf ['dense']['bias']",
    ),
    (
        "group_channels-random-no-key",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, method="random"),
        ValueError,
        "group_channels: method='random' needs key=",
    ),
    (
        "group_channels-random-bad-key",
        lambda: prune.group_channels(_params(), [_dense_group()], 0.5, method="random", key="seed"),
        ValueError,
        "group_channels: key must be a jax.random key or an int seed",
    ),
    (
        "group_channels-no-prunable-group",
        lambda: prune.group_channels(_params(), [_dense_group(False, "model output")], 0.5),
        ValueError,
        "group_channels: no prunable group; reasons: model output",
    ),
    (
        "group_masks-no-group",
        lambda: prune.group_masks(_params(), (), 0.5),
        ValueError,
        "group_masks: no prunable group; reasons: groups is empty",
    ),
    (
        "group_channels-member-beyond-leaf",
        lambda: prune.group_channels(
            _params(), [prune.ChannelGroup(6, (prune.Member("['dense']['bias']", 0, 1, 0, 6, 0),), True, "")], 0.5
        ),
        ValueError,
        "group_channels: params['dense']['bias'] has shape (4,), too small",
    ),
    (
        "group_importance-taylor-no-grads",
        lambda: prune.group_importance(_params(), _dense_group(), "taylor"),
        ValueError,
        "group_importance: method='taylor' needs grads=",
    ),
    (
        "group_importance-method",
        lambda: prune.group_importance(_params(), _dense_group(), "l0"),
        ValueError,
        "group_importance: method must be one of",
    ),
    (
        "channel_groups-no-weighted-op",
        lambda: prune.channel_groups(lambda p, x: x * p["dense"]["bias"][None], _params(), jnp.ones((1, 4))),
        ValueError,
        "channel_groups: apply_fn has no dot_general",
    ),
    # prune: physical shrink and students of any model (issue 18)
    (
        "channel_groups-params-do-not-fit",
        lambda: prune.channel_groups(_mlp_two, {"a": jnp.ones((3, 5)), "b": jnp.ones((4, 2))}, jnp.ones((1, 3))),
        ValueError,
        "channel_groups: apply_fn fails on these params and x (do they belong together?)",
    ),
    (
        "shrink_groups-keep-length",
        lambda: prune.shrink_groups(_mlp_two, _two(), jnp.ones((1, 3)), _two_groups(), (None,)),
        ValueError,
        "shrink_groups: keep has 1 entries for 2 groups",
    ),
    (
        "shrink_groups-keep-shape",
        lambda: prune.shrink_groups(_mlp_two, _two(), jnp.ones((1, 3)), _two_groups(), (np.ones(3, bool), None)),
        ValueError,
        "shrink_groups: keep[0] must be a bool array of shape (4,)",
    ),
    (
        "shrink_groups-removes-all",
        lambda: prune.shrink_groups(_mlp_two, _two(), jnp.ones((1, 3)), _two_groups(), (np.zeros(4, bool), None)),
        ValueError,
        "shrink_groups: keep[0] removes every channel of the group of ['a']",
    ),
    (
        "shrink_groups-unprunable",
        lambda: prune.shrink_groups(_mlp_two, _two(), jnp.ones((1, 3)), _two_groups(), (None, np.array([True, False]))),
        ValueError,
        "shrink_groups: group 1 is not prunable (model output)",
    ),
    (
        "make_student-ratio",
        lambda: prune.make_student(_mlp_two, _two(), jnp.ones((1, 3)), param_ratio=1.5),
        ValueError,
        "make_student: param_ratio must be in (0, 1], got 1.5",
    ),
    (
        "make_student-init",
        lambda: prune.make_student(_mlp_two, _two(), jnp.ones((1, 3)), param_ratio=0.5, init="zeros"),
        ValueError,
        "make_student: init must be one of",
    ),
    # prune: leaves by use (jaxpr.weight_filter) and neuron masks on channel groups (issue 18)
    (
        "neuron_masks-no-apply_fn",
        lambda: prune.neuron_masks(_params(), 0.5),
        ValueError,
        "neuron_masks: apply_fn and x are needed",
    ),
    (
        "neuron_masks-sparsity-one",
        lambda: prune.neuron_masks(_params(), 1.0, apply_fn=_dense_stack, x=jnp.ones((1, 4))),
        ValueError,
        "neuron_masks: sparsity must be a scalar in [0, 1)",
    ),
    (
        "neuron_masks-multiple-zero",
        lambda: prune.neuron_masks(_params(), 0.5, apply_fn=_dense_stack, x=jnp.ones((1, 4)), multiple=0),
        ValueError,
        "neuron_masks: multiple must be an integer >= 1",
    ),
    (
        "neuron_masks-norm",
        lambda: prune.neuron_masks(_params(), 0.5, norm="l3", apply_fn=_dense_stack, x=jnp.ones((1, 4))),
        ValueError,
        "neuron_masks: norm must be one of ('l1', 'l2')",
    ),
    (
        "neuron_masks-no-prunable-group",
        lambda: prune.neuron_masks(_params(), 0.5, apply_fn=lambda p, x: x @ p["dense"]["kernel"], x=jnp.ones((1, 4))),
        ValueError,
        "neuron_masks: apply_fn has no prunable channel group; reasons: ['model output']",
    ),
    (
        "weight_filter-no-weighted-op",
        lambda: hamjax.jaxpr.weight_filter(lambda p, x: x * p["dense"]["bias"][None], _params(), jnp.ones((1, 4))),
        ValueError,
        "weight_filter: apply_fn has no dot_general or conv_general_dilated",
    ),
    # quant
    (
        "fake_quant-bits-1",
        lambda: quant.fake_quant(jnp.ones(4), bits=1),
        ValueError,
        "bits must be an integer in [2, 16]",
    ),
    (
        "fake_quant-bits-17",
        lambda: quant.fake_quant(jnp.ones(4), bits=17),
        ValueError,
        "bits must be an integer in [2, 16]",
    ),
    (
        "quantize_model-method",
        lambda: quant.quantize_model(*_mlp(), method="int3"),
        ValueError,
        "method must be one of ('weight_only', 'dynamic', 'static')",
    ),
    (
        "quantize_model-single-array",
        lambda: quant.quantize_model(*_mlp(), calibration=_ds().train.x[:8]),
        ValueError,
        "calibration must be a list of batches",
    ),
    (
        "quantize_model-calibration_method",
        lambda: quant.quantize_model(*_mlp(), calibration=[_ds().train.x[:8]], calibration_method="median"),
        ValueError,
        "quantize_model: calibration_method must be one of ('minmax', 'percentile', 'mse')",
    ),
    (
        "calibrate-single-array",
        lambda: quant.calibrate(*_mlp(), _ds().train.x[:8]),
        ValueError,
        "batches must be a list of batches",
    ),
    (
        "calibrate-method",
        lambda: quant.calibrate(*_mlp(), [_ds().train.x[:8]], method="median"),
        ValueError,
        "method must be one of ('minmax', 'percentile', 'mse')",
    ),
    (
        "calibrate-percentile",
        lambda: quant.calibrate(*_mlp(), [_ds().train.x[:8]], method="percentile", percentile=120.0),
        ValueError,
        "percentile must be a finite number > 50 and <= 100",
    ),
    # distill
    (
        "soft_target_loss-temperature-0",
        lambda: distill.soft_target_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=0.0),
        ValueError,
        "temperature must be a finite number > 0",
    ),
    (
        "soft_target_loss-temperature-inf",
        lambda: distill.soft_target_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=INF),
        ValueError,
        "temperature must be a finite number > 0",
    ),
    (
        "distillation_loss-alpha",
        lambda: distill.distillation_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), alpha=1.5),
        ValueError,
        "alpha must be a scalar in [0, 1]",
    ),
    (
        "distillation_loss-shapes",
        lambda: distill.distillation_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32)),
        ValueError,
        "teacher_logits must have one shape (..., C)",
    ),
    (
        "distill-fit-function-teacher",
        lambda: distill.fit(*_mlp(), _ds(), train.TrainConfig(epochs=1), teachers=_mlp()[0], progress=False),
        ValueError,
        "teachers must be an (apply_fn, params) pair",
    ),
    # distill: function matching and the regularised teacher
    (
        "distill-fit-teacher_method",
        lambda: distill.fit(*_mlp(), _ds(), train.TrainConfig(epochs=1), teachers=_mlp(), teacher_method="train"),
        ValueError,
        "distill.fit: teacher_method must be one of",
    ),
    (
        "distill-fit-teacher_noise",
        lambda: distill.fit(*_mlp(), _ds(), train.TrainConfig(epochs=1), teachers=_mlp(), teacher_noise=-0.1),
        ValueError,
        "distill.fit: teacher_noise must be",
    ),
    (
        "distill-fit-mixup",
        lambda: distill.fit(*_mlp(), _ds(), train.TrainConfig(epochs=1), teachers=_mlp(), mixup=-1.0),
        ValueError,
        "distill.fit: mixup must be",
    ),
    (
        "distill-fit-augment-spec",
        lambda: distill.fit(*_mlp(), _ds(), train.TrainConfig(epochs=1), teachers=_mlp(), augment="rotate=270"),
        ValueError,
        "distill.fit: augment parse('rotate=270'): rotate must be",
    ),
    (
        "distill-fit-augment-cached",
        lambda: distill.fit(
            *_mlp(), _ds(), train.TrainConfig(epochs=1), teachers=_mlp(), augment="shift=1", cache="always"
        ),
        ValueError,
        "so their outputs cannot be cached; use cache='auto'",
    ),
    # precision
    ("get_policy-dtype", lambda: precision.get_policy("p=f99"), ValueError, "key 'p': unknown dtype 'f99'"),
    ("get_policy-key", lambda: precision.get_policy("q=f32"), ValueError, "unknown key 'q'"),
    ("get_policy-garbage", lambda: precision.get_policy("fast"), ValueError, "unknown dtype 'fast'"),
    ("get_policy-int", lambda: precision.get_policy(3), ValueError, "get_policy: policy must be a Policy or a string"),
    (
        "dynamic_loss_scale-initial",
        lambda: precision.dynamic_loss_scale(optax.sgd(0.1), initial_scale=0.0),
        ValueError,
        "initial_scale must be a finite number > 0",
    ),
    (
        "dynamic_loss_scale-growth",
        lambda: precision.dynamic_loss_scale(optax.sgd(0.1), growth_factor=0.5),
        ValueError,
        "growth_factor must be a finite number > 1",
    ),
    (
        "dynamic_loss_scale-backoff",
        lambda: precision.dynamic_loss_scale(optax.sgd(0.1), backoff_factor=1.5),
        ValueError,
        "backoff_factor must be a finite number > 0 and < 1",
    ),
    (
        "dynamic_loss_scale-interval",
        lambda: precision.dynamic_loss_scale(optax.sgd(0.1), growth_interval=0),
        ValueError,
        "growth_interval must be an integer >= 1",
    ),
    (
        "static_loss_scale-inf",
        lambda: precision.static_loss_scale(optax.sgd(0.1), INF),
        ValueError,
        "scale must be a finite number > 0",
    ),
    # recipes
    ("recipe-unknown-kind", lambda: _recipe(kind="shrinkify"), recipes.RecipeError, "steps[0].kind must be one of"),
    (
        "recipe-learning_rate-inf",
        lambda: _recipe(kind="train", learning_rate=INF),
        recipes.RecipeError,
        "steps[0].learning_rate must be a finite number",
    ),
    (
        "recipe-learning_rate-nan",
        lambda: _recipe(kind="train", learning_rate=math.nan),
        recipes.RecipeError,
        "steps[0].learning_rate must be a finite number",
    ),
    (
        "recipe-unknown-field",
        lambda: _recipe(kind="train", epochz=2),
        recipes.RecipeError,
        "unknown field(s) ['epochz']",
    ),
    (
        "recipe-wrong-type",
        lambda: _recipe(kind="train", epochs="2"),
        recipes.RecipeError,
        "steps[0].epochs must be int",
    ),
    (
        "recipe-stage-escape",
        lambda: _recipe(kind="train", stage="../x"),
        recipes.RecipeError,
        "steps[0].stage must be a name",
    ),
    (
        "recipe-old-mode",
        lambda: _recipe(kind="quantize", mode="static"),
        recipes.RecipeError,
        "steps[0].mode = 'static': this field of 'quantize' is now called method",
    ),
    (
        "recipe-no-steps",
        lambda: recipes.validate({"name": "r", "steps": []}),
        recipes.RecipeError,
        "steps must be a non-empty list of tables ([[steps]])",
    ),
    ("recipe-top-key", lambda: recipes.validate({"name": "r", "stepz": []}), recipes.RecipeError, "stepz"),
    ("recipes-load-non-utf8", lambda: recipes.load(_recipe_file(b'name = "\xff"\n')), recipes.RecipeError, "bad.toml"),
    ("recipes-load-bad-toml", lambda: recipes.load(_recipe_file("name = \n")), recipes.RecipeError, "bad.toml"),
    (
        "recipes-load-unknown-name",
        lambda: recipes.load("no-such-recipe"),
        recipes.RecipeError,
        "unknown recipe 'no-such-recipe'",
    ),
    # checkpoint
    (
        "Checkpointer-regular-file",
        lambda: checkpoint.Checkpointer(_file()),
        ValueError,
        "directory must be a directory",
    ),
    (
        "Checkpointer-every",
        lambda: checkpoint.Checkpointer(_tmp() / "ck", every=0),
        ValueError,
        "every must be an integer >= 1",
    ),
    (
        "Checkpointer-max_to_keep",
        lambda: checkpoint.Checkpointer(_tmp() / "ck", max_to_keep=0),
        ValueError,
        "max_to_keep must be an integer >= 1",
    ),
    # models
    ("import_model-no-colon", lambda: models.import_model("just_a_module"), models.ModelImportError, "just_a_module"),
    (
        "import_model-missing-module",
        lambda: models.import_model("no_such_module_xyz:make"),
        models.ModelImportError,
        "no_such_module_xyz",
    ),
    (
        "import_model-missing-function",
        lambda: models.import_model("math:no_such_function"),
        models.ModelImportError,
        "no_such_function",
    ),
    (
        "import_model-missing-file",
        lambda: models.import_model("missing_file.py:make"),
        models.ModelImportError,
        "missing_file.py",
    ),
    (
        "import_model-not-str",
        lambda: models.import_model(3),
        models.ModelImportError,
        "spec must be a string 'package.module:function' or 'path/to/file.py:function'",
    ),
    ("saved-load-meta-list", lambda: _saved_model(lambda s: s.update(meta=[1])), ValueError, "meta must be a mapping"),
    ("saved-load-no-format", lambda: _saved_model(lambda s: s.pop("format")), ValueError, "has no format field"),
    ("saved-load-format", lambda: _saved_model(lambda s: s.update(format="x/2")), ValueError, "format must be"),
    (
        "saved-load-field-type",
        lambda: _saved_model(lambda s: s["config"]["fields"].update(sizes="big")),
        ValueError,
        "sizes must be a list of int",
    ),
    ("saved-load-type", lambda: _saved_model(lambda s: s["config"].update(type="Alien")), ValueError, "type"),
    ("build-unknown", lambda: models.build("resnet9000"), ValueError, "resnet9000"),
    # hamjax.optimize
    (
        "optimize-unknown-recipe",
        lambda: _optimize("no-such-recipe"),
        recipes.RecipeError,
        "recipe: unknown recipe 'no-such-recipe'",
    ),
    (
        "optimize-logits-mismatch",
        lambda: _optimize(dataset=_ds()._replace(num_classes=12), recipe="baseline"),
        ValueError,
        "apply_fn: the model gives 10 logits per example, but the labels have 12",
    ),
    (
        "optimize-reference-step-custom-model",
        lambda: _optimize(recipes.validate({"name": "r", "steps": [{"kind": "distill", "student": "config"}]})),
        recipes.RecipeError,
        "recipe 'r' steps[0] (distill, param_ratio=0.25, student='config') needs a hamjax reference model",
    ),
    (
        "optimize-tuple-data",
        lambda: _optimize(dataset=(_ds().train.x, _ds().train.y)),
        TypeError,
        "data must be a hamjax.data.Dataset (from hamjax.data.from_arrays, load_npz or load)",
    ),
    (
        "optimize-out-file",
        lambda: hamjax.optimize(*_mlp(), _ds(), "nm-2-4", out=_file()),
        ValueError,
        "optimize: out must be a directory, got the regular file",
    ),
    (
        "optimize-out-model-link",
        lambda: hamjax.optimize(*_mlp(), _ds(), "nm-2-4", out=_linked_out("model")),
        ValueError,
        "its model folder would go to",
    ),
    (
        "optimize-out-report-folder",
        lambda: hamjax.optimize(*_mlp(), _ds(), "nm-2-4", out=_linked_out("report.json", folder=True)),
        ValueError,
        "report.json is a folder, where optimize writes its report.json",
    ),
    # search
    (
        "SearchConfig-method",
        lambda: proposals.SearchConfig(method="grid"),
        ValueError,
        "method must be one of ('random', 'evolution', 'bayesian')",
    ),
    (
        "SearchConfig-generations",
        lambda: proposals.SearchConfig(generations=0),
        ValueError,
        "generations must be an integer >= 1",
    ),
    (
        "SearchConfig-population_size",
        lambda: proposals.SearchConfig(population_size=2.5),
        ValueError,
        "population_size must be an integer >= 1",
    ),
    (
        "SearchConfig-learning_rate",
        lambda: proposals.SearchConfig(learning_rate=NAN),
        ValueError,
        "learning_rate must be a finite number > 0",
    ),
    (
        "SearchConfig-sample_size",
        lambda: proposals.SearchConfig(population_size=4, sample_size=8),
        ValueError,
        "sample_size must be an integer in [1, 4]",
    ),
    (
        "SearchConfig-mutation_rate",
        lambda: proposals.SearchConfig(mutation_rate=1.5),
        ValueError,
        "mutation_rate must be a finite number >= 0 and <= 1",
    ),
    (
        "SearchConfig-objectives",
        lambda: proposals.SearchConfig(objectives=("accuracy", "beauty")),
        ValueError,
        "beauty",
    ),
    (
        "SearchConfig-execution",
        lambda: proposals.SearchConfig(execution="warp"),
        ValueError,
        "execution must be one of ('auto', 'vmap', 'chunked', 'sequential')",
    ),
    ("Population-unknown-hparam", lambda: _population({"momentum": 0.9}), ValueError, "momentum"),
    ("Population-warmup-fraction", lambda: _population({"warmup_steps": 2.5}), ValueError,
     "Population: hyperparameter warmup_steps must be finite and an integer >= 0"),
    ("Population-mixup-negative", lambda: _population({"mixup": -0.1}), ValueError,
     "Population: hyperparameter mixup must be finite and >= 0"),
    (
        "Population-learning_rate-nan",
        lambda: _population({"learning_rate": NAN}),
        ValueError,
        "learning_rate must be finite and >= 0",
    ),
    (
        "Population-hparam-length",
        lambda: _population({"learning_rate": jnp.ones(3)}),
        ValueError,
        "learning_rate must have shape (2,)",
    ),
    (
        "Population-execution",
        lambda: trainer.Population(_mlp()[0], execution="warp"),
        ValueError,
        "execution must be one of ('auto', 'vmap', 'chunked', 'sequential')",
    ),
    (
        "Population-train-nan-xs",
        lambda: _population_train(xs=np.full((2, 4, *_ds().input_shape), NAN, np.float32)),
        ValueError,
        "Population.train: xs holds",
    ),
    (
        "Population-train-float-ys",
        lambda: _population_train(ys=np.full((2, 4), 0.5, np.float32)),
        ValueError,
        "Population.train: ys must hold integer class labels",
    ),
    (
        "Population-train-ys-beyond-logits",
        lambda: _population_train(ys=np.full((2, 4), 10, np.int32)),
        ValueError,
        "ys holds label 10 at index 0; expected labels in [0, 10)",
    ),
    (
        "Population-evaluate-negative-y",
        lambda: _population_evaluate(y=np.full(4, -2, np.int32)),
        ValueError,
        "Population.evaluate: y holds label -2",
    ),
    # export
    (
        "onnx-precision",
        lambda: _onnx(precision="int4"),
        ValueError,
        "precision must be one of ('fp32', 'fp16', 'int8')",
    ),
    ("onnx-path-suffix", lambda: _onnx(path=_tmp()), ValueError, "path must end in .onnx"),
    ("onnx-int8-no-calibration", lambda: _onnx(precision="int8"), ValueError, "calibration"),
    ("onnx-path-directory", lambda: _onnx(path=_made_dir("d.onnx")), ValueError, "is a directory, not a file to write"),
    (
        "onnx-path-under-file",
        lambda: _onnx(path=Path(_file()) / "m.onnx"),
        ValueError,
        "its directory must be a directory",
    ),
    ("onnx-fft", lambda: _onnx_of(lambda p, x: jnp.abs(jnp.fft.fft(x))), ExportError, "fft at "),
    ("onnx-complex", lambda: _onnx_of(lambda p, x: jnp.real(jax.lax.complex(x, x))), ExportError, "complex numbers"),
    (
        "onnx-random",
        lambda: _onnx_of(lambda p, x: x + jax.random.normal(jax.random.key(0), x.shape)),
        ExportError,
        "must be deterministic",
    ),
    (
        "onnx-int8-random",
        lambda: _onnx_of(
            lambda p, x: x + jax.random.normal(jax.random.key(0), x.shape),
            precision="int8",
            calibration=[_ds().train.x[:32]],
        ),
        ExportError,
        "random_bits at ",
    ),
    # graph transforms: batch-norm folding and low-rank factorisation
    (
        "fold-train",
        lambda: graph.fold(*_mlp(), _ds().train.x[:2], train=True),
        ValueError,
        "fold: train=True makes every norm use batch statistics",
    ),
    (
        "fold-batch-statistics",
        lambda: graph.fold(
            lambda p, x: (lambda z: z - z.mean(0, keepdims=True))(x.reshape(x.shape[0], -1) @ p["w1"]),
            _mlp()[1],
            _ds().train.x[:2],
        ),
        ValueError,
        "uses batch statistics (train mode); fold needs inference mode",
    ),
    ("lowrank-rank", lambda: graph.lowrank(*_mlp(), _ds().train.x[:2], rank=11), ValueError, "rank=11 is larger"),
    ("lowrank-energy-0", lambda: graph.lowrank(*_mlp(), _ds().train.x[:2], energy=0.0), ValueError, "energy must"),
    ("lowrank-energy-above-1", lambda: graph.lowrank(*_mlp(), _ds().train.x[:2], energy=1.5), ValueError, "energy"),
    ("lowrank-budget", lambda: graph.lowrank(*_mlp(), _ds().train.x[:2], budget=1.5), ValueError, "budget must"),
    ("lowrank-no-choice", lambda: graph.lowrank(*_mlp(), _ds().train.x[:2]), ValueError, "give one of rank="),
    ("svd_factors-rank", lambda: graph.svd_factors(jnp.ones((4, 3)), 4), ValueError, "rank must be"),
    (
        "recipe-lowrank-energy",
        lambda: recipes.validate({"name": "r", "steps": [{"kind": "lowrank", "energy": 2.0}]}),
        recipes.RecipeError,
        "energy",
    ),
    # graph transforms: token merging
    (
        "merge_tokens-r-too-large",
        lambda: graph.merge_tokens(_tokens, jnp.eye(8), _ds().train.x[:2], 5),
        ValueError,
        "merge_tokens: r=5 merges 5 tokens at 'b/merge', which holds 8 tokens",
    ),
    (
        "merge_tokens-r-negative",
        lambda: graph.merge_tokens(_tokens, jnp.eye(8), _ds().train.x[:2], -1),
        ValueError,
        "r",
    ),
    (
        "merge_tokens-r-per-block",
        lambda: graph.merge_tokens(_tokens, jnp.eye(8), _ds().train.x[:2], [1, 1]),
        ValueError,
        "one value per merge marker",
    ),
    (
        "merge_tokens-no-markers",
        lambda: graph.merge_tokens(*_mlp(), _ds().train.x[:2], 1),
        ValueError,
        "marks no tokens",
    ),
    (
        "recipe-merge-r",
        lambda: recipes.validate({"name": "r", "steps": [{"kind": "merge", "r": -1}]}),
        recipes.RecipeError,
        "r must be >= 0",
    ),
    # graph transforms: attention fusion
    (
        "fuse_attention-implementation",
        lambda: graph.fuse_attention(*_mlp(), implementation="flash"),
        ValueError,
        "fuse_attention: implementation must be one of",
    ),
    (
        "recipe-fuse-implementation",
        lambda: recipes.validate({"name": "r", "steps": [{"kind": "fuse", "implementation": "flash"}]}),
        recipes.RecipeError,
        "implementation",
    ),
    # training memory, compilation cache and profiles
    ("TrainConfig-remat", lambda: train.TrainConfig(remat="sqrt"), ValueError, "TrainConfig: remat must be one of"),
    (
        "rematerialize-policy",
        lambda: graph.rematerialize(jnp.sum, "everything"),
        ValueError,
        "rematerialize: policy must be one of",
    ),
    (
        "rematerialize-segments",
        lambda: graph.rematerialize(jnp.sum, "full", segments=0),
        ValueError,
        "rematerialize: segments must be",
    ),
    (
        "recipe-train-remat",
        lambda: recipes.validate({"name": "r", "steps": [{"kind": "train", "remat": "sqrt"}]}),
        recipes.RecipeError,
        "remat",
    ),
    ("optimize-profile-file", lambda: _optimize(profile=_file()), ValueError, "optimize: profile must be a directory"),
    ("use_cache-file", lambda: compilation.use_cache(_file()), ValueError, "use_cache: directory must be a directory"),
    # regularizers: penalties, spectral norms, DropConnect, adversarial examples, stochastic depth
    (
        "elastic_net-negative-l1",
        lambda: hamjax.regularize.elastic_net(_mlp()[1], l1=-1e-4),
        ValueError,
        "elastic_net: l1 must be a finite number >= 0",
    ),
    (
        "spectral_penalty-negative",
        lambda: hamjax.regularize.spectral_penalty(-0.1),
        ValueError,
        "spectral_penalty: coefficient must be",
    ),
    (
        "drop_connect-rate-one",
        lambda: hamjax.regularize.drop_connect(jax.random.key(0), _mlp()[1], 1.0),
        ValueError,
        "drop_connect: rate must be a scalar in [0, 1)",
    ),
    (
        "fgsm-negative-epsilon",
        lambda: hamjax.regularize.fgsm(*_mlp(), jnp.zeros((2, 64)), jnp.zeros(2, jnp.int32), epsilon=-0.1),
        ValueError,
        "fgsm: epsilon must be a finite number >= 0",
    ),
    (
        "pgd-negative-epsilon",
        lambda: hamjax.regularize.pgd(*_mlp(), jnp.zeros((2, 64)), jnp.zeros(2, jnp.int32), epsilon=-1, steps=3),
        ValueError,
        "pgd: epsilon must be",
    ),
    (
        "pgd-zero-steps",
        lambda: hamjax.regularize.pgd(*_mlp(), jnp.zeros((2, 64)), jnp.zeros(2, jnp.int32), epsilon=0.1, steps=0),
        ValueError,
        "pgd: steps must be an integer >= 1",
    ),
    (
        "robust_accuracy-steps",
        lambda: hamjax.regularize.robust_accuracy(*_mlp(), _ds().test, epsilon=0.1, steps=0),
        ValueError,
        "robust_accuracy: steps must be an integer >= 1",
    ),
    (
        "ViTConfig-drop_path",
        lambda: models.ViTConfig(drop_path=1.0),
        ValueError,
        "ViTConfig.drop_path=1.0",
    ),
    # augmentation: strengths out of range, mixing alphas, spec strings, soft targets
    (
        "augment-rotate-degrees",
        lambda: hamjax.augment.rotate(jax.random.key(0), jnp.zeros((2, 8, 8)), 200),
        ValueError,
        "rotate: degrees must be a finite number >= 0 and <= 180",
    ),
    (
        "augment-scale-amount",
        lambda: hamjax.augment.scale(jax.random.key(0), jnp.zeros((2, 8, 8)), 1.0),
        ValueError,
        "scale: amount must be a finite number >= 0 and < 1",
    ),
    (
        "augment-shift-pixels",
        lambda: hamjax.augment.shift(jax.random.key(0), jnp.zeros((2, 8, 8)), -1),
        ValueError,
        "shift: pixels must be a finite number >= 0",
    ),
    (
        "augment-crop-padding",
        lambda: hamjax.augment.crop(jax.random.key(0), jnp.zeros((2, 8, 8)), 1.5),
        ValueError,
        "crop: padding must be an integer >= 0",
    ),
    (
        "augment-cutout-size",
        lambda: hamjax.augment.cutout(jax.random.key(0), jnp.zeros((2, 8, 8)), -2),
        ValueError,
        "cutout: size must be a finite number >= 0",
    ),
    (
        "augment-noise-std",
        lambda: hamjax.augment.noise(jax.random.key(0), jnp.zeros((2, 8, 8)), NAN),
        ValueError,
        "noise: std must be a finite number >= 0",
    ),
    (
        "augment-randaugment-magnitude",
        lambda: hamjax.augment.randaugment(jax.random.key(0), jnp.zeros((2, 8, 8)), 1.5),
        ValueError,
        "randaugment: magnitude must be a finite number >= 0 and <= 1",
    ),
    (
        "augment-randaugment-num_ops",
        lambda: hamjax.augment.randaugment(jax.random.key(0), jnp.zeros((2, 8, 8)), 0.5, num_ops=0),
        ValueError,
        "randaugment: num_ops must be an integer >= 1",
    ),
    (
        "augment-images-integer",
        lambda: hamjax.augment.rotate(jax.random.key(0), jnp.zeros((2, 8, 8), jnp.int32), 10),
        ValueError,
        "rotate: x must be a floating array of shape (N, H, W, C) or (N, H, W)",
    ),
    (
        "augment-mixup-alpha-negative",
        lambda: hamjax.augment.mixup(jax.random.key(0), jnp.zeros((2, 4)), jnp.full((2, 3), 1 / 3), -1.0),
        ValueError,
        "mixup: alpha must be a finite number > 0, got -1.0",
    ),
    (
        "augment-mixup-alpha-zero",
        lambda: hamjax.augment.mixup(jax.random.key(0), jnp.zeros((2, 4)), jnp.full((2, 3), 1 / 3), 0),
        ValueError,
        "mixup: alpha must be a finite number > 0, got 0",
    ),
    (
        "augment-cutmix-alpha-zero",
        lambda: hamjax.augment.cutmix(jax.random.key(0), jnp.zeros((2, 4, 4)), jnp.full((2, 3), 1 / 3), 0.0),
        ValueError,
        "cutmix: alpha must be a finite number > 0",
    ),
    (
        "augment-mixup-targets",
        lambda: hamjax.augment.mixup(jax.random.key(0), jnp.zeros((2, 4)), jnp.array([0, 1]), 0.2),
        ValueError,
        "mixup: targets must be floating probability rows of shape (N, C)",
    ),
    (
        "augment-soft_targets-smoothing",
        lambda: hamjax.augment.soft_targets(jnp.array([0, 1]), 3, smoothing=1.0),
        ValueError,
        "soft_targets: smoothing must be a scalar in [0, 1)",
    ),
    (
        "augment-soft_targets-labels",
        lambda: hamjax.augment.soft_targets(jnp.array([0, 3]), 3),
        ValueError,
        "soft_targets: y must hold labels in [0, 3)",
    ),
    ("augment-parse-unknown", lambda: hamjax.augment.parse("flip=1"), ValueError, "unknown augmentation 'flip'"),
    (
        "augment-parse-twice",
        lambda: hamjax.augment.parse("shift=1,shift=2"),
        ValueError,
        "shift appears more than once",
    ),
    (
        "augment-parse-range",
        lambda: hamjax.augment.parse("shift=2,rotate=270"),
        ValueError,
        "parse('shift=2,rotate=270'): rotate must be a finite number >= 0 and <= 180",
    ),
    (
        "augment-parse-number",
        lambda: hamjax.augment.parse("shift=two"),
        ValueError,
        "shift must be a number, got 'two'",
    ),
    (
        "augment-parse-item",
        lambda: hamjax.augment.parse("shift=1,noise"),
        ValueError,
        "item 'noise' must read name=value",
    ),
    (
        "augment-parse-ops",
        lambda: hamjax.augment.parse("rotate=10,ops=2"),
        ValueError,
        "ops sets randaugment's operations per example, but there is no randaugment item",
    ),
    # CLI
    ("cli-optimize-out-file", _cli("optimize", "--out", "@FILE"), None, "--out"),
    ("cli-optimize-model", _cli("optimize", "--model", "resnet9000"), None, "--model"),
    ("cli-optimize-model-spec", _cli("optimize", "--model", "no_such_module_xyz:make"), None, "no_such_module_xyz"),
    ("cli-optimize-data-missing", _cli("optimize", "--data", "missing.npz"), None, "missing.npz"),
    ("cli-optimize-recipe", _cli("optimize", "--recipe", "no-such-recipe"), None, "no-such-recipe"),
    ("cli-optimize-seed", _cli("optimize", "--seed", "x"), None, "--seed"),
    ("cli-optimize-compile-cache-file", _cli("optimize", "--compile-cache", "@FILE"), None, "--compile-cache"),
    ("cli-optimize-profile-file", _cli("optimize", "--profile", "@FILE"), None, "--profile must be a directory"),
    (
        "cli-optimize-compile-cache-twice",
        _cli("optimize", "--compile-cache", "c", "--no-compile-cache"),
        None,
        "--no-compile-cache",
    ),
    ("cli-recipes-check", _cli("recipes", "--check", "@BADRECIPE"), None, "stage"),
    ("cli-export-precision", _cli("export", "mlp", "--precision", "int4", "--out", "m.onnx"), None, "--precision"),
    ("cli-export-model", _cli("export", "resnet9000", "--out", "m.onnx"), None, "resnet9000"),
    ("cli-search-population", _cli("search", "--population", "0"), None, "population"),
    # tune: search spaces, batches, samplers, pruners, objectives and studies (issue 19)
    ("tune-space-empty", lambda: _tune(space={}), ValueError, "Space: the space searches nothing"),
    ("tune-space-unsearchable", lambda: _tune(space={"dropout": {"low": 0.0, "high": 0.5}}), ValueError,
     "Space: ['dropout'] cannot be searched in one population call"),
    ("tune-space-low-high", lambda: _tune(space={"learning_rate": {"low": 0.1, "high": 0.01}}), ValueError,
     "Space: learning_rate needs low < high"),
    ("tune-space-log-zero", lambda: _tune(space={"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}),
     ValueError, "Space: weight_decay on a log scale needs low > 0"),
    ("tune-space-range", lambda: _tune(space={"sparsity": {"low": 0.5, "high": 1.0}}), ValueError,
     "Space: sparsity.high must be a number in [0.0, 1.0)"),
    ("tune-space-warmup", lambda: _tune(space={"warmup_steps": {"low": 0, "high": 2.5}}), ValueError,
     "Space: warmup_steps.high must be an integer >= 0"),
    ("tune-space-mixup", lambda: _tune(space={"mixup": {"low": -1.0, "high": 0.4}}), ValueError,
     "Space: mixup.low must be a number >= 0"),
    ("tune-space-schedule", lambda: _tune(space={"schedule": {"choices": ["cosine", "step"]}}), ValueError,
     "Space: schedule choices must each be one of ('constant', 'cosine')"),
    ("tune-space-width", lambda: _tune(space={"width": {"choices": [0, 16]}}), ValueError,
     "Space: width choices must each be an integer >= 1"),
    ("tune-width-no-model", lambda: _tune(space={"width": {"choices": [8, 16]}}), ValueError,
     "tune: ['width'] change the model: give model="),
    ("tune-space-depth", lambda: _tune(space={"depth": {"choices": [0, 2]}}), ValueError,
     "Space: depth choices must each be an integer >= 1"),
    ("tune-space-activation", lambda: _tune(space={"activation": {"choices": ["relu", "softmax"]}}), ValueError,
     "Space: activation choices must each be one of ('relu', 'gelu', 'tanh', 'silu')"),
    ("tune-depth-builder-without-depth", lambda: _tune(space={"depth": {"choices": [1, 2]}}, model=lambda width: _mlp()),
     ValueError, "tune: the space searches ['depth'], but model(width) takes no such keyword"),
    ("reference-depth-zero", lambda: tune.models.reference("mlp", _ds())(depth=0), ValueError,
     "tune.models.reference: depth must be an integer >= 1, got 0"),
    ("reference-activation-unknown", lambda: tune.models.reference("mlp", _ds())(activation="softmax"), ValueError,
     "tune.models.reference: activation must be one of ('relu', 'gelu', 'tanh', 'silu'), got 'softmax'"),
    ("reference-activation-cnn", lambda: tune.models.reference("cnn", _ds(), structure=["activation"]), ValueError,
     "tune.models.reference: reference model 'cnn' has no activation to choose"),
    ("reference-depth-vit-activation", lambda: _tune(space={"depth": 1, "activation": {"choices": ["relu", "gelu"]}},
                                                     model=tune.models.reference("vit", _ds())), ValueError,
     "tune: the space searches ['activation'], but model(width=None, depth=None) takes no such keyword"),
    ("reference-depth-imported-model", lambda: tune.models.reference("hamjax.models:build", _ds(), structure=["depth"]),
     ValueError, "tune: a width, depth or activation needs a reference model"),
    ("tune-space-recipe-field", lambda: tune.Space.from_recipe("default"), ValueError,
     "steps[1].search.param_ratio (distill) cannot be searched"),
    ("tune-batch-zero", lambda: _tune(batch=0), ValueError, "tune: batch must be an integer in [1, 4]"),
    ("tune-batch-over-budget", lambda: _tune(batch=5), ValueError, "tune: batch must be an integer in [1, 4]"),
    ("tune-sampler", lambda: _tune(sampler="bohb"), ValueError, "tune: sampler must be one of"),
    ("tune-pruner", lambda: _tune(pruner="asha"), ValueError, "tune: pruner must be one of"),
    ("tune-objectives", lambda: _tune(objectives="size"), ValueError, "tune: objectives must name 'accuracy'"),
    ("tune-pruner-several-objectives", lambda: _tune(objectives="accuracy,size", pruner="median"), ValueError,
     "tune: pruner 'median' needs one objective"),
    ("tune-grid-float", lambda: _tune(sampler="grid"), ValueError, "grid sampler: learning_rate needs choices or a step"),
    ("tune-dataset", lambda: tune.run(*_mlp(), (_ds().train.x, _ds().train.y), {"weight_decay": {"low": 0.0, "high": 0.1}},
                                      trials=2, batch=2), ValueError, "tune: dataset must be a hamjax.data.Dataset"),
    ("tune-params", lambda: tune.run(_mlp()[0], {}, _ds(), {"weight_decay": {"low": 0.0, "high": 0.1}}, trials=2,
                                     batch=2), ValueError, "tune: params must be a params tree or init(key) -> params"),
    ("tune-study-directions", lambda: _tune_twice(objectives="accuracy,size"), ValueError,
     "has directions ['maximize'], not the requested ['maximize', 'minimize']"),
    ("tune-study-execution", lambda: _tune_twice(execution="vmap"), ValueError,
     "tune: study 'bad' ran with execution 'sequential'; pass execution='sequential'"),
    # tune: storages, studies of other directions, batches of trials (issue 19)
    ("open_storage-missing-folder", lambda: tune_storage.open_storage(f"sqlite:///{_tmp()}/missing/t.db"), ValueError,
     "open_storage: cannot open storage sqlite:///"),
    ("open_storage-journal-missing-folder", lambda: tune_storage.open_storage(f"{_tmp()}/missing/t.log"), ValueError,
     "open_storage: cannot open storage /"),
    ("open_storage-unreachable-password-hidden", lambda: _unreachable_postgresql(), ValueError,
     "open_storage: cannot open storage postgresql://tune:***@127.0.0.1:"),
    ("open_storage-scheme", lambda: tune_storage.open_storage("redis://u:s3cret@h/0"), ValueError,
     "open_storage: url must start with sqlite:///, journal:///, postgresql:// or end in .log, got 'redis://u:***@h/0'"),
    ("open_storage-heartbeat", lambda: tune_storage.open_storage(None, heartbeat_interval=0), ValueError,
     "open_storage: heartbeat_interval must be an integer >= 1, got 0"),
    ("tune-storage-unopenable", lambda: _tune(storage=f"postgresql://tune:s3cret@127.0.0.1:{_free_port()}/x"), ValueError,
     "cannot open storage postgresql://tune:***@"),
    ("create_or_load_study-directions", lambda: _stored_study(["maximize"]), ValueError,
     "create_or_load_study: study 's' has directions ['minimize'], not the requested ['maximize']"),
    ("create_or_load_study-direction-name", lambda: _stored_study(["up"]), ValueError,
     "create_or_load_study: directions must each be 'minimize' or 'maximize', got ['up']"),
    ("ask_batch-zero", lambda: bookkeeping.ask_batch(_stored_study(["minimize"]), 0, {"x": _unit()}), ValueError,
     "ask_batch: n must be an integer >= 1, got 0"),
    ("tell_batch-lengths", lambda: _told(values=[1.0]), ValueError,
     "tell_batch: values and states must have one entry per trial (2), got 1 values"),
    # autotune: model signatures and layer sensitivity (issue 20)
    (
        "model_signature-no-weighted-op",
        lambda: autotune.model_signature(lambda p, x: x * p["s"][None], {"s": jnp.ones(3)}, jnp.ones((2, 3))),
        ValueError,
        "model_signature: apply_fn has no dense or convolution op",
    ),
    (
        "model_signature-no-batch-axis",
        lambda: autotune.model_signature(plain_mlp()[0], plain_mlp()[1], jnp.float32(1.0)),
        ValueError,
        "model_signature: x must be a batch",
    ),
    ("Signature.from_dict-unknown-field", lambda: autotune.Signature.from_dict({"colour": 1}), ValueError, "unknown fields"),
    ("similarity-not-a-signature", lambda: autotune.similarity({}, {}), ValueError, "similarity: a must be a Signature"),
    ("layer_sensitivity-method", lambda: _sensitivity(method="distill"), ValueError, "method must be one of"),
    ("layer_ablation-method", lambda: _sensitivity(autotune.layer_ablation, method="ptq"), ValueError, "layer_ablation: method"),
    ("layer_sensitivity-no-levels", lambda: _sensitivity(levels=()), ValueError, "levels must be a non-empty sequence"),
    ("layer_sensitivity-bits-1", lambda: _sensitivity(levels=(8, 1)), ValueError, "levels must be an integer in [2, 16], got 1"),
    ("layer_sensitivity-bits-17", lambda: _sensitivity(levels=(17,)), ValueError, "levels must be an integer in [2, 16], got 17"),
    (
        "layer_sensitivity-sparsity-1",
        lambda: _sensitivity(method="prune", levels=(0.5, 1.0)),
        ValueError,
        "levels must be a scalar in [0, 1), got 1.0",
    ),
    ("layer_sensitivity-x-y-lengths", lambda: _sensitivity(cut_y=1), ValueError, "y must be a vector with one label per row of x"),
    # autotune: the knowledge base (issue 20)
    ("knowledge-url-scheme", lambda: _kb("mysql://kb:s3cret@db/x"), ValueError,
     "KnowledgeBase: url must start with sqlite:// or postgresql://, got 'mysql://kb:***@db/x'"),
    ("knowledge-url-type", lambda: _kb(3), ValueError, "KnowledgeBase: url must be a database URL string or None, got 3"),
    ("knowledge-corrupt", lambda: _kb(f"sqlite:///{_file('corrupt.db', b'not a database' * 100)}"), ValueError,
     "corrupt.db: file is not a database"),
    ("knowledge-missing-folder", lambda: _kb(f"sqlite:///{_tmp()}/missing/kb.db"), ValueError,
     "KnowledgeBase: cannot open knowledge base sqlite:///"),
    ("knowledge-unreachable-password-hidden", lambda: _unreachable_knowledge_base(), ValueError,
     "KnowledgeBase: cannot open knowledge base postgresql://kb:***@127.0.0.1:"),
    ("knowledge-newer-schema", lambda: _newer_knowledge_base(), ValueError,
     "was written by schema version 2; this hamjax reads version 1 at most: upgrade hamjax"),
    ("knowledge-read-only-write", lambda: _kb(_kb_url(), read_only=True).add(_kb_record()), ValueError,
     "kb.db: it is open read-only"),
    ("knowledge-read-only-nothing-there", lambda: _kb(f"sqlite:///{_file('empty.db', b'')}", read_only=True), ValueError,
     "empty.db: it holds no knowledge base"),
    ("knowledge-open-fallback", lambda: _kb_class().open(_kb_url(), fallback="ignore"), ValueError,
     "KnowledgeBase.open: fallback must be one of ('raise', 'read_only'), got 'ignore'"),
    ("knowledge-suggest-k", lambda: _kb(_kb_url()).suggest(_kb_signature(), k=0), ValueError,
     "KnowledgeBase.suggest: k must be an integer >= 1, got 0"),
    ("knowledge-suggest-half-life", lambda: _kb(_kb_url()).suggest(_kb_signature(), half_life_days=0), ValueError,
     "KnowledgeBase.suggest: half_life_days must be a finite number > 0, got 0"),
    ("knowledge-lookup-similarity", lambda: _kb(_kb_url()).lookup(_kb_signature(), min_similarity=1.5), ValueError,
     "KnowledgeBase.lookup: min_similarity must be a finite number >= 0 and <= 1, got 1.5"),
    ("knowledge-lookup-signature", lambda: _kb(_kb_url()).lookup(42), ValueError,
     "KnowledgeBase: signature must be a Signature or its dict, got int"),
    ("knowledge-record-nan", lambda: _kb_record(accuracy_drop=NAN), ValueError,
     "Record: results.accuracy_drop must be a finite number, got nan"),
    ("knowledge-record-feasible", lambda: _kb_record(feasible="yes"), ValueError,
     "Record: results.feasible must be a bool, got 'yes'"),
    ("knowledge-record-confidence", lambda: _kb_record(confidence=0), ValueError,
     "Record: confidence must be a finite number > 0 and <= 1, got 0"),
    ("knowledge-record-no-steps", lambda: _kb_record(recipe={"steps": []}), ValueError,
     "recipe_key: recipe must be a dict with a non-empty list of steps"),
    ("knowledge-add-not-record", lambda: _kb(_kb_url()).add({"family": "mlp"}), ValueError,
     "KnowledgeBase.add: records[0] must be a Record, got dict"),
    ("knowledge-report-unknown", lambda: _kb(_kb_url()).report("f" * 32, {"accuracy_drop": 0.0, "feasible": True}),
     ValueError, "KnowledgeBase.report: no record has id or recipe key 'ffffffffffffffffffffffffffffffff'"),
    ("knowledge-report-no-baseline", lambda: _kb(_kb_url()).report("f" * 32, _kb_measured()), ValueError,
     "KnowledgeBase.report: baseline is needed when measured is not a results dict"),
    ("knowledge-import-missing", lambda: _kb(_kb_url()).import_jsonl(_tmp() / "missing.jsonl"), ValueError,
     "import_jsonl: cannot read"),
    ("knowledge-export-missing-folder", lambda: _kb(_kb_url()).export_jsonl(_tmp() / "missing" / "kb.jsonl"), ValueError,
     "export_jsonl: path must be in an existing folder"),
    # autotune: constraints, weights, the recipe space, strategies and selection (issue 20)
    ("Constraints-negative-drop", lambda: autotune.Constraints(max_accuracy_drop=-0.5), ValueError,
     "Constraints: max_accuracy_drop must be a finite number >= 0, got -0.5"),
    ("Constraints-size-reduction-below-1", lambda: autotune.Constraints(min_size_reduction=0.25), ValueError,
     "Constraints: min_size_reduction must be a finite number >= 1, got 0.25"),
    ("Constraints-latency-nan", lambda: autotune.Constraints(max_latency_ms=NAN), ValueError,
     "Constraints: max_latency_ms must be a finite number > 0, got nan"),
    ("Weights-negative", lambda: autotune.Weights(speed=-1.0), ValueError,
     "Weights: speed must be a finite number >= 0, got -1.0"),
    ("Weights-all-zero", lambda: autotune.Weights(0, 0, 0), ValueError,
     "Weights: speed, memory and accuracy must not all be zero, got (0, 0, 0)"),
    ("RecipeSpace-family", lambda: autotune.RecipeSpace("rnn"), ValueError,
     "RecipeSpace: signature.family must be one of ('mlp', 'cnn', 'transformer', 'vit', 'hybrid'), got 'rnn'"),
    ("RecipeSpace-export", lambda: autotune.RecipeSpace("mlp", export="int4"), ValueError,
     "RecipeSpace: export must be one of ('int8', 'fp32', 'auto'), got 'int4'"),
    ("RecipeSpace-finetune", lambda: autotune.RecipeSpace("mlp", finetune=(3, -1)), ValueError,
     "RecipeSpace: finetune must be an integer >= 0, got -1"),
    ("RecipeSpace-learning-rate", lambda: autotune.RecipeSpace("mlp", learning_rates=(0.0,)), ValueError,
     "RecipeSpace: learning_rates must be a finite number > 0, got 0.0"),
    ("RecipeSpace-sensitive", lambda: autotune.RecipeSpace("mlp", sensitive=("['a'],['b']",)), ValueError,
     "RecipeSpace: sensitive must be a sequence of site names without commas"),
    ("RecipeSpace-no-epochs", lambda: autotune.RecipeSpace("mlp", finetune=()), ValueError,
     "RecipeSpace: finetune and learning_rates must each offer at least one choice"),
    ("RecipeSpace-step-not-in-family", lambda: autotune.RecipeSpace("mlp", steps=("merge",)), ValueError,
     "RecipeSpace: steps must be one of ('distill', 'prune', 'lowrank', 'quantize', 'precision'), got 'merge'"),
    ("strategies.make-name", lambda: strategies.make("greedy", autotune.RecipeSpace("mlp"), None, None, None, seed=0),
     ValueError, "strategies.make: name must be one of ('rules', 'mcts', 'hybrid', 'random', 'optuna'), got 'greedy'"),
    ("strategies.make-seed", lambda: strategies.make("random", autotune.RecipeSpace("mlp"), None, None, None, seed=-1),
     ValueError, "strategies.make('random'): seed must be an integer >= 0, got -1"),
    ("MCTS-alpha", lambda: autotune.MCTS(autotune.RecipeSpace("mlp"), alpha=1.0), ValueError,
     "MCTS: alpha must be a finite number > 0 and < 1, got 1.0"),
    ("select-method", lambda: selection.select({"rules": []}, "elitist", np.random.default_rng(0)), ValueError,
     "select: method must be one of ('tournament', 'roulette', 'rank'), got 'elitist'"),
    ("select-no-strategies", lambda: selection.select({}, "rank", np.random.default_rng(0)), ValueError,
     "select: histories_by_strategy must name at least one strategy, got none"),
    # autotune: optimize_auto and the hamjax autotune command, refused before any measurement (issue 20)
    ("optimize_auto-budget-0", lambda: _auto(budget=0), ValueError,
     "optimize_auto: budget must be an integer >= 1, got 0"),
    ("optimize_auto-seconds-0", lambda: _auto(seconds=0), ValueError, "optimize_auto: seconds must be"),
    ("optimize_auto-strategy", lambda: _auto(strategy="greedy"), ValueError,
     "optimize_auto: strategy must be one of ('rules', 'mcts', 'hybrid', 'random', 'optuna', 'ensemble'), got 'greedy'"),
    ("optimize_auto-weights-negative", lambda: _auto(weights={"memory": -2.0}), ValueError,
     "Weights: memory must be a finite number >= 0, got -2.0"),
    ("optimize_auto-weights-all-zero", lambda: _auto(weights={"speed": 0, "memory": 0, "accuracy": 0}), ValueError,
     "must not all be zero"),
    ("optimize_auto-weights-type", lambda: _auto(weights=[1, 1, 1]), TypeError,
     "optimize_auto: weights must be an objective.Weights or a dict, got list"),
    ("optimize_auto-no-val-split", lambda: _auto(dataset=_ds()._replace(val=data.Split(_ds().val.x[:0], _ds().val.y[:0]))),
     ValueError, "dataset must have a validation split"),
    ("optimize_auto-knowledge-type", lambda: _auto(knowledge=3), TypeError, "optimize_auto: knowledge must be"),
    ("cli-autotune-weights-negative", _cli("autotune", "--weights", "speed=-1", "--knowledge", "none"), None,
     "Weights: speed must be a finite number >= 0, got -1.0"),
    ("cli-autotune-max-drop", _cli("autotune", "--max-drop", "-1", "--knowledge", "none"), None,
     "Constraints: max_accuracy_drop"),
    # serving: input statistics, drift, the sequential test, the A/B record
    ("serve-input-stats-bins", lambda: _input_stats().from_data(np.zeros((10, 3)), bins=1), ValueError,
     "InputStats.from_data: bins must be an integer in [2, 64], got 1"),
    ("serve-input-stats-nan", lambda: _input_stats().from_data(np.array([[0.0], [np.nan]])), ValueError,
     "x holds NaN or inf"),
    ("serve-input-stats-newer", lambda: _input_stats().load(_newer_stats()), ValueError, "newer format version"),
    ("serve-drift-window-0", lambda: _drift(window=0), ValueError, "DriftMonitor: window must be an integer >= 1"),
    ("serve-drift-wrong-shape", lambda: _drift().observe(np.zeros((2, 4))), ValueError,
     "InputStats: x must have shape (n, *(3,))"),
    ("serve-sample-size-delta-0", lambda: _sequential().sample_size(0.0, 0.9), ValueError,
     "sample_size: delta must be nonzero"),
    ("serve-ab-no-weight", lambda: _ab({"a": 0.0, "b": 0.0}), ValueError, "at least one variant weight must be > 0"),
    ("serve-ab-not-sqlite", lambda: _ab(path=_file("junk.sqlite", b"not sqlite" * 200)), ValueError,
     "is not a usable A/B record"),
    ("serve-ab-unknown-request", lambda: _ab().feedback("nope", [1]), KeyError, "unknown request id 'nope'"),
    ("serve-ab-label-count", lambda: _ab_recorded().feedback("r1", [1, 2]), ValueError,
     "labels must hold 1 classes (one per row), got 2"),
    ("serve-ab-label-type", lambda: _ab_recorded().feedback("r1", ["1"]), ValueError,
     "labels must be a list of integer classes"),
]  # fmt: skip


def _unreachable_postgresql():
    """A PostgreSQL URL with a password, on a port nobody listens on: the message must not show the password."""
    try:
        tune_storage.open_storage(f"postgresql://tune:s3cret@127.0.0.1:{_free_port()}/x")
    except ValueError as error:
        assert "s3cret" not in str(error), error
        raise


def _stored_study(directions):
    url = f"sqlite:///{_tmp() / 'stored.db'}"
    tune_storage.create_or_load_study(url, "s", ["minimize"])
    return tune_storage.create_or_load_study(url, "s", directions)


def _unit():
    import optuna

    return optuna.distributions.FloatDistribution(0.0, 1.0)


def _told(values):
    study = _stored_study(["minimize"])
    return bookkeeping.tell_batch(study, bookkeeping.ask_batch(study, 2, {"x": _unit()}), values)


def _free_port() -> int:
    """A localhost port nobody listens on (hamjax.parallel.initialize rows)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _busy_coordinator():
    """Process 0 of a group whose coordinator port another socket already listens on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        return parallel.initialize(f"127.0.0.1:{busy.getsockname()[1]}", 2, 0)


def _npz(**arrays) -> str:
    path = _tmp() / "arrays.npz"
    np.savez(path, **arrays)
    return str(path)


def _structured(granularity):
    module = models.build("mlp", input_shape=(8, 8, 1), sizes=(8, 10))
    _, params = hamjax.functional(module)
    return prune.structured_masks(models.config_of(module), params, 0.5, granularity=granularity)


def _population(hparams):
    apply_fn, params = _mlp()
    stacked = {k: jnp.stack([v, v]) for k, v in params.items()} if isinstance(params, dict) else params
    return trainer.Population(apply_fn).init(stacked, hparams)


def _population_train(**bad):
    apply_fn, params = _mlp()
    stacked = jax.tree.map(lambda v: jnp.stack([v, v]), params)
    population = trainer.Population(apply_fn)
    x, y = _ds().train.x[:8], _ds().train.y[:8]
    batches = {"xs": x.reshape(2, 4, *x.shape[1:]), "ys": y.reshape(2, 4), **bad}
    return population.train(population.init(stacked), batches["xs"], batches["ys"])


def _population_evaluate(**bad):
    apply_fn, params = _mlp()
    population = trainer.Population(apply_fn)
    split = {"x": _ds().train.x[:4], "y": _ds().train.y[:4], **bad}
    return population.evaluate(jax.tree.map(lambda v: jnp.stack([v, v]), params), split["x"], split["y"])


def _made_dir(name: str) -> Path:
    (_tmp() / name).mkdir()
    return _tmp() / name


def _onnx_of(fn, **kw):
    from hamjax import export

    return export.onnx(fn, None, _ds().train.x[:2], _tmp() / "m.onnx", **kw)


def _onnx(*, path=None, **kw):
    from hamjax import export

    apply_fn, params = _mlp()
    return export.onnx(apply_fn, params, _ds().train.x[:2], path or (_tmp() / "m.onnx"), **kw)


def _kb_class():
    from hamjax.autotune.knowledge import KnowledgeBase

    return KnowledgeBase


def _kb(url, **kw):
    return _kb_class()(url, **kw)


def _kb_url():
    """A knowledge base made in the temporary folder; its URL."""
    url = f"sqlite:///{_tmp() / 'kb.db'}"
    _kb(url).close()
    return url


def _kb_signature():
    from hamjax.autotune.signature import Signature

    return Signature("mlp", (), 1000, (64,), "vector", 10, 2, dense=2, dense_params=1000)


def _kb_record(recipe=None, confidence=1.0, **results):
    from hamjax.autotune.knowledge import Record

    results = {"accuracy_drop": 0.2, "feasible": True, **results}
    recipe = recipe or {"steps": [{"kind": "export"}]}
    return Record(_kb_signature().to_dict(), "mlp", recipe, results, {}, 1.8e9, "lab", confidence)


def _kb_measured():
    from hamjax.autotune.objective import Measured

    return Measured(accuracy=0.9, latency_ms=1.0, size_bytes=100, params=10)


def _unreachable_knowledge_base():
    """A PostgreSQL URL with a password, on a port nobody listens on: the message must not show the password."""
    try:
        _kb(f"postgresql://kb:s3cret@127.0.0.1:{_free_port()}/x")
    except ValueError as error:
        assert "s3cret" not in str(error), error
        raise


def _newer_knowledge_base():
    import sqlite3

    url = _kb_url()
    with sqlite3.connect(_tmp() / "kb.db") as conn:
        conn.execute("UPDATE hamjax_knowledge_schema SET version = 2")
    return _kb(url)


def _input_stats():
    from hamjax.serve.reference import InputStats

    return InputStats


def _newer_stats():
    d = _input_stats().from_data(np.zeros((4, 2))).to_json()
    path = _tmp() / "m.stats.json"
    path.write_text(json.dumps({**d, "version": d["version"] + 1}))
    return path


def _drift(**kw):
    from hamjax.serve.drift import DriftMonitor

    return DriftMonitor(_input_stats().from_data(np.arange(30.0).reshape(10, 3)), **kw)


def _sequential():
    from hamjax.serve import sequential

    return sequential


def _ab(variants=None, path=None):
    from hamjax.serve.abtest import ABTest

    return ABTest(variants or {"a": 1.0, "b": 1.0}, path=path or _tmp() / "ab.sqlite")


def _ab_recorded():
    ab = _ab()
    ab.record("r1", "a", 1.0, [1])
    return ab


def test_catalogue_is_large_and_distinct():
    ids = [row[0] for row in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 80


@pytest.mark.parametrize(("call", "error", "phrase"), [row[1:] for row in CASES], ids=[row[0] for row in CASES])
def test_bad_input(call, error, phrase, digits, tmp_path, capsys, monkeypatch):
    _CTX["digits"], _CTX["tmp"] = digits, tmp_path
    monkeypatch.chdir(tmp_path)
    if error is None:  # a CLI row: exit status 2 and one line on stderr, no traceback
        code = call()
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("hamjax"), err
        assert phrase in err, err
        return
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert phrase in message, message
    assert len(message.strip().splitlines()) == 1, message
