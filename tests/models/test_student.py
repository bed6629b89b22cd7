"""Distillation students: from_config, param_count and make_student."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hamjax
from hamjax.models import (
    MODELS,
    CNNConfig,
    HAMNetConfig,
    MLPConfig,
    ViTConfig,
    build,
    config_of,
    from_config,
    make_student,
    param_count,
)

SMALL_CONFIGS = [
    MLPConfig(sizes=(64, 40, 30, 20, 10), activation="tanh"),
    CNNConfig(input_shape=(8, 8, 1), channels=(4, 8, 16), kernel_size=3, dense=(32,)),
    CNNConfig(input_shape=(8, 8, 3), channels=(4,), kernel_size=3, dense=()),
    ViTConfig(input_shape=(8, 8, 3), patch_size=4, hidden_size=18, num_heads=3, num_layers=1, mlp_ratio=1.5),
    HAMNetConfig(input_size=64, num_tokens=8, hidden_size=16, num_heads=2, num_layers=4, attention_every=3),
    HAMNetConfig(input_size=64, num_tokens=8, hidden_size=12, num_heads=3, num_layers=2, mlp_ratio=1.5),
]


def _abstract(config):
    """The model without running its initializers (eager initializers compile per shape and are slow)."""
    return nnx.eval_shape(lambda: from_config(config))


def _counted(config) -> int:
    _, variables = hamjax.functional(_abstract(config))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"]))


@pytest.fixture(scope="module")
def defaults():
    return {name: config_of(nnx.eval_shape(lambda name=name: build(name))) for name in MODELS}


def _random_variables(shapes, seed=0):
    rng = np.random.default_rng(seed)

    def draw(path, a):
        value = rng.normal(size=a.shape)
        if path[-1].key == "var":
            value = 0.5 + np.abs(value)
        return jnp.asarray(0.1 * value, a.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


# ---------------------------------------------------------------- from_config and param_count


def test_param_count_of_default_models(defaults):
    assert defaults["mlp"] == MLPConfig(sizes=(784, 512, 512, 10))
    expected = {
        "mlp": 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10,
        # conv (k*k*in*out + out) and batch-norm scale/bias per stage, then 7*7*16 -> 120 -> 84 -> 10.
        "cnn": (25 * 6 + 6 + 12) + (25 * 6 * 16 + 16 + 32) + (784 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10),
        # patch embedding, 16 positions, 2 blocks of (2 norms, q/k/v/out, 64 -> 128 -> 64 MLP), norm, head.
        "vit": (49 * 64 + 64)
        + 16 * 64
        + 2 * (4 * 64 + 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64))
        + 2 * 64
        + (64 * 10 + 10),
    }
    for name in MODELS:
        config = defaults[name]
        assert param_count(config) == _counted(config), name
        if name in expected:
            assert param_count(config) == expected[name], name


@pytest.mark.parametrize("config", SMALL_CONFIGS, ids=lambda c: type(c).__name__)
def test_param_count_of_small_configs(config):
    assert param_count(config) == _counted(config)


def test_param_count_of_small_hamnet_by_hand():
    config = SMALL_CONFIGS[4]
    assert config.layer_kinds == ("attention", "mixer", "mixer", "attention")
    d, t = 16, 8
    attention = 4 * d + 4 * (d * d + d) + (d * 32 + 32) + (32 * d + d)
    mixer = 4 * d + (t * 16 + 16) + (16 * t + t) + (d * 32 + 32) + (32 * d + d)
    tail = 2 * d + d * 10 + 10
    assert param_count(config) == (8 * d + d) + t * d + 2 * attention + 2 * mixer + tail


def test_from_config_builds_the_model_of_build():
    config = MLPConfig(sizes=(64, 8, 10))
    model = from_config(config, seed=3)
    assert config_of(model) == config
    _, got = hamjax.functional(model)
    _, want = hamjax.functional(build("mlp", input_shape=(8, 8, 1), sizes=(64, 8, 10), seed=3))
    chex.assert_trees_all_equal(got, want)
    _, other = hamjax.functional(from_config(config, seed=4))
    assert not np.allclose(other["params"]["layers"][0]["kernel"], got["params"]["layers"][0]["kernel"])
    assert model(jnp.ones((2, 8, 8, 1))).shape == (2, 10)


@pytest.mark.parametrize(
    ("config", "cls"),
    [
        (SMALL_CONFIGS[1], hamjax.models.CNN),
        (SMALL_CONFIGS[3], hamjax.models.ViT),
        (SMALL_CONFIGS[4], hamjax.models.HAMNet),
    ],
)
def test_from_config_class(config, cls):
    model = _abstract(config)
    assert isinstance(model, cls) and config_of(model) == config


@pytest.mark.parametrize("bad", [{"sizes": (64, 10)}, "mlp", None, object()])
def test_non_config_raises_type_error(bad):
    with pytest.raises(TypeError, match="reference model config"):
        from_config(bad)
    with pytest.raises(TypeError, match="reference model config"):
        make_student(bad, width_ratio=0.5)
    with pytest.raises(TypeError, match="reference model config"):
        make_student(bad, width_ratio=5.0)  # the type is checked first


@pytest.mark.parametrize("bad", [{"sizes": (64, 10)}, object()])
def test_param_count_of_a_non_config_raises_type_error(bad):
    with pytest.raises(TypeError, match="reference model config"):
        param_count(bad)


# ---------------------------------------------------------------- width and depth


def test_width_ratio_scales_widths(defaults):
    mlp, cnn, vit, hamnet = (defaults[n] for n in MODELS)
    assert make_student(mlp, width_ratio=0.5) == MLPConfig(sizes=(784, 256, 256, 10))
    assert make_student(mlp, width_ratio=1e-3).sizes == (784, 1, 1, 10)  # at least one unit
    assert make_student(cnn, width_ratio=0.5) == dataclasses.replace(cnn, channels=(3, 8), dense=(60, 42))
    assert make_student(cnn, width_ratio=1e-3) == dataclasses.replace(cnn, channels=(1, 1), dense=(1, 1))
    # Token widths: a multiple of the head count, at least one per head; heads keep their number.
    assert make_student(vit, width_ratio=0.5) == dataclasses.replace(vit, hidden_size=32)
    assert make_student(vit, width_ratio=0.3) == dataclasses.replace(
        vit, hidden_size=20
    )  # 19.2 rounds to 20, five per head
    assert make_student(vit, width_ratio=1e-3) == dataclasses.replace(vit, hidden_size=4)
    assert make_student(hamnet, width_ratio=0.5) == dataclasses.replace(hamnet, hidden_size=32)
    assert make_student(hamnet, width_ratio=0.4) == dataclasses.replace(hamnet, hidden_size=24)  # 25.6 -> 24
    three_heads = SMALL_CONFIGS[3]
    assert make_student(three_heads, width_ratio=0.5) == dataclasses.replace(three_heads, hidden_size=9)


@pytest.mark.parametrize("config", SMALL_CONFIGS, ids=lambda c: type(c).__name__)
def test_full_ratios_give_the_teacher_back(config):
    assert make_student(config, width_ratio=1.0) == config
    assert make_student(config, width_ratio=1, depth_ratio=1) == config
    assert make_student(config, param_ratio=1.0) == config


def test_depth_ratio_keeps_the_first_layers():
    mlp = SMALL_CONFIGS[0]
    assert make_student(mlp, width_ratio=1.0, depth_ratio=0.5).sizes == (64, 40, 30, 10)
    assert make_student(mlp, width_ratio=0.5, depth_ratio=0.5).sizes == (64, 20, 15, 10)
    assert make_student(mlp, width_ratio=1.0, depth_ratio=1e-6).sizes == (64, 40, 10)  # at least one
    assert make_student(MLPConfig(sizes=(64, 10)), width_ratio=0.5, depth_ratio=0.5).sizes == (64, 10)

    cnn = SMALL_CONFIGS[1]
    assert make_student(cnn, width_ratio=1.0, depth_ratio=0.67) == dataclasses.replace(cnn, channels=(4, 8))
    assert make_student(cnn, width_ratio=0.5, depth_ratio=1e-6) == dataclasses.replace(cnn, channels=(2,), dense=(16,))
    lenet = CNNConfig()
    assert make_student(lenet, width_ratio=1.0, depth_ratio=0.5) == dataclasses.replace(
        lenet, channels=(6,), dense=(120,)
    )
    no_dense = SMALL_CONFIGS[2]
    assert make_student(no_dense, width_ratio=0.5, depth_ratio=0.5) == dataclasses.replace(no_dense, channels=(2,))

    vit = ViTConfig(input_shape=(8, 8, 1), patch_size=4, num_layers=3)
    assert make_student(vit, width_ratio=1.0, depth_ratio=0.5) == dataclasses.replace(vit, num_layers=2)
    assert make_student(vit, width_ratio=1.0, depth_ratio=1e-6) == dataclasses.replace(vit, num_layers=1)
    hamnet = HAMNetConfig(input_size=64, num_tokens=8)
    student = make_student(hamnet, width_ratio=0.5, depth_ratio=0.75)
    assert student == dataclasses.replace(hamnet, hidden_size=32, num_layers=3)
    assert student.layer_kinds == ("attention", "mixer", "attention")


def test_depth_keeps_the_first_layers_weights_shapes():
    """The kept layers are the teacher's first ones: their parameter shapes are the teacher's."""
    teacher = SMALL_CONFIGS[0]
    _, t = hamjax.functional(_abstract(teacher))
    _, s = hamjax.functional(_abstract(make_student(teacher, width_ratio=1.0, depth_ratio=0.5)))
    shapes = [layer["kernel"].shape for layer in s["params"]["layers"].values()]
    assert shapes == [(64, 40), (40, 30), (30, 10)]
    assert shapes[:2] == [t["params"]["layers"][i]["kernel"].shape for i in range(2)]


# ---------------------------------------------------------------- param_ratio


@pytest.mark.parametrize(("name", "tolerance"), [("mlp", 0.05), ("cnn", 0.05), ("vit", 0.15), ("hamnet", 0.15)])
def test_param_ratio_reaches_the_fraction_and_the_student_runs(defaults, name, tolerance):
    teacher = defaults[name]
    student = make_student(teacher, param_ratio=0.25)
    assert type(student) is type(teacher)
    ratio = param_count(student) / param_count(teacher)
    assert abs(ratio - 0.25) <= tolerance * 0.25, ratio
    assert param_count(student) == _counted(student)
    apply_fn, shapes = hamjax.functional(_abstract(student))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
    y = jax.jit(apply_fn)(_random_variables(shapes), x)
    assert y.shape == (2, 10) and np.all(np.isfinite(y))


def test_param_ratio_matches_the_documented_example_and_is_monotone():
    teacher = MLPConfig(sizes=(784, 512, 512, 10))
    assert make_student(teacher, param_ratio=0.25).sizes == (784, 173, 173, 10)
    counts = [param_count(make_student(teacher, param_ratio=r)) for r in (0.05, 0.1, 0.25, 0.5, 0.9)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    for r, count in zip((0.05, 0.1, 0.25, 0.5, 0.9), counts, strict=True):
        assert abs(count / param_count(teacher) - r) < 0.01 * r + 1e-3


def test_param_ratio_with_depth_ratio():
    teacher = MLPConfig(sizes=(784, 512, 512, 10))
    student = make_student(teacher, param_ratio=0.25, depth_ratio=0.5)
    assert len(student.sizes) == 3 and student.sizes[0] == 784 and student.sizes[-1] == 10
    assert abs(param_count(student) / param_count(teacher) - 0.25) < 0.01
    # One hidden layer at full width has 407,050 of 669,706 parameters: 0.9 is out of reach.
    with pytest.raises(ValueError, match=r"param_ratio=0.9 is out of reach with depth_ratio=0.5.*0\.608"):
        make_student(teacher, param_ratio=0.9, depth_ratio=0.5)


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({}, "exactly one of width_ratio and param_ratio"),
        ({"width_ratio": 0.5, "param_ratio": 0.5}, "exactly one of width_ratio and param_ratio"),
        ({"depth_ratio": 0.5}, "exactly one"),
        ({"width_ratio": 0.0}, "width_ratio=0.0"),
        ({"width_ratio": -0.5}, "width_ratio=-0.5"),
        ({"width_ratio": 1.5}, "width_ratio=1.5"),
        ({"width_ratio": float("nan")}, "width_ratio=nan"),
        ({"width_ratio": "0.5"}, "width_ratio='0.5'"),
        ({"width_ratio": 0.5, "depth_ratio": 0}, "depth_ratio=0"),
        ({"width_ratio": 0.5, "depth_ratio": 1.01}, "depth_ratio=1.01"),
        pytest.param({"width_ratio": 0.5, "depth_ratio": None}, "depth_ratio=None"),
        pytest.param({"width_ratio": True}, "width_ratio=True"),
        ({"param_ratio": 0}, "param_ratio=0"),
        ({"param_ratio": 2.0}, "param_ratio=2.0"),
        ({"param_ratio": [0.5]}, r"param_ratio=\[0.5\]"),
    ],
)
def test_bad_ratios_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        make_student(MLPConfig(sizes=(64, 32, 10)), **kw)
