"""Function matching pieces: per-step view keys, the regularised teacher forward, the checks of fit's view arguments."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import distill, models
from hamjax.jaxpr import capture
from tests.reference_models import plain_mlp

X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 1)), jnp.float32)


@pytest.fixture(scope="module")
def dropout_teacher():
    return hamjax.functional(models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10), dropout_rate=0.5))


def test_view_keys_differ_per_step_and_repeat_per_seed():
    base = jax.random.key(3)
    steps = [distill.view_keys(jax.random.fold_in(base, t)) for t in range(3)]
    data = [jax.random.key_data(k.teacher) for k in steps]
    assert not np.array_equal(data[0], data[1]) and not np.array_equal(data[1], data[2])
    again = distill.view_keys(jax.random.fold_in(jax.random.key(3), 1))
    np.testing.assert_array_equal(jax.random.key_data(again.teacher), data[1])
    np.testing.assert_array_equal(jax.random.key_data(again.augment), jax.random.key_data(steps[1].augment))


def test_dropout_teacher_differs_per_key_and_is_deterministic_per_key(dropout_teacher):
    apply_fn, params = dropout_teacher
    forward = distill.teacher_forward(capture(apply_fn, ()), "dropout")
    a, _ = forward(params, X, jax.random.key(0))
    b, _ = forward(params, X, jax.random.key(1))
    again, _ = forward(params, X, jax.random.key(0))
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_array_equal(a, again)
    clean, _ = distill.teacher_forward(capture(apply_fn, ()), "eval")(params, X, jax.random.key(0))
    reference, _ = hamjax.call_model(apply_fn, params, X)
    np.testing.assert_allclose(clean, reference, rtol=1e-6)


def test_dropout_teacher_on_a_linen_model_and_noise_on_a_plain_one():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(16)(x.reshape(x.shape[0], -1))
            return nn.Dense(10)(nn.Dropout(0.5, deterministic=not train)(x))

    module = Net()
    variables = module.init(jax.random.key(0), X)
    apply_fn = hamjax.linen_functional(module, variables)[0]
    forward = distill.teacher_forward(capture(apply_fn, ()), "dropout")
    a, b = (forward(variables, X, jax.random.key(k))[0] for k in (0, 1))
    assert float(jnp.abs(a - b).max()) > 1e-3
    plain = plain_mlp()
    noisy = distill.teacher_forward(capture(plain[0], ()), noise=0.5)
    c, d = (noisy(plain[1], X, jax.random.key(k))[0] for k in (0, 1))
    assert float(jnp.abs(c - d).max()) > 1e-3
    still = distill.teacher_forward(capture(plain[0], ()))
    np.testing.assert_array_equal(still(plain[1], X, jax.random.key(0))[0], still(plain[1], X, jax.random.key(1))[0])


def test_check_view_says_when_the_teacher_runs_online():
    def check(augment=None, **kw):
        return distill.check_view("fit", augment, X[:4], **{"teacher_method": "eval", "teacher_noise": 0.0, **kw})[1]

    assert not check()
    assert check(lambda k, x: x)
    assert check(mixup=0.2)
    assert check(teacher_method="dropout")
    assert check(teacher_noise=0.1)
    augment, online = distill.check_view("fit", "rotate=10,cutout=4", X[:4], teacher_method="eval", teacher_noise=0.0)
    assert online and repr(augment) == "rotate=10,cutout=4"
    assert augment(jax.random.key(0), X).shape == X.shape


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"augment": 3}, "fit: augment must be None, a spec string such as 'shift=2,rotate=10' or a function"),
        ({"augment": "rotate=270"}, "fit: augment parse('rotate=270'): rotate must be"),
        ({"mixup": -0.5}, "fit: mixup must be"),
        (
            {"augment": lambda k, x: x[:, :4]},
            "fit: augment must return a batch shaped like its input, float32[4,8,8,1], got float32[4,4,8,1]",
        ),
        (
            {"augment": lambda k, x: x.astype(jnp.bfloat16)},
            "fit: augment must return a batch shaped like its input, float32[4,8,8,1], got bfloat16[4,8,8,1]",
        ),
        ({"teacher_method": "train"}, "fit: teacher_method must be one of"),
        ({"teacher_noise": -0.1}, "fit: teacher_noise must be"),
    ],
)
def test_check_view_refuses_bad_values(kw, message):
    args = {"augment": None, "mixup": 0.0, "teacher_method": "eval", "teacher_noise": 0.0, **kw}
    with pytest.raises(ValueError, match=re.escape(message)):
        distill.check_view("fit", args.pop("augment"), X[:4], **args)
    with pytest.raises(ValueError, match="teacher_forward: method"):
        distill.teacher_forward(lambda p, x: (x, {}), "train")
