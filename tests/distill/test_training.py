"""Training a student with distillation terms: caching, teachers, adapters, EMA teacher, policies, resume, errors."""

import dataclasses
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hamjax
from hamjax import distill, models

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits():
    return hamjax.data.load("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    apply_fn, params = hamjax.functional(models.build("mlp", input_shape=SHAPE, sizes=(64, 64, 64, 10)))
    result = hamjax.fit(apply_fn, params, digits, hamjax.TrainConfig(epochs=10, learning_rate=1e-2), progress=False)
    return apply_fn, result.params


def _student(sizes=(64, 16, 10), seed=1):
    return hamjax.functional(models.build("mlp", input_shape=SHAPE, sizes=sizes, seed=seed))


CONFIG = hamjax.TrainConfig(epochs=1, batch_size=64, learning_rate=1e-2)


def _accuracy(apply_fn, params, split):
    return hamjax.train.evaluate(apply_fn, params, split)["accuracy"]


def test_supervised_objective_is_the_default(digits):
    apply_fn, params = _student()
    plain = hamjax.fit(apply_fn, params, digits, CONFIG, progress=False)
    explicit = hamjax.fit(apply_fn, params, digits, CONFIG, objective=hamjax.train.supervised(), progress=False)
    chex.assert_trees_all_equal(plain.params, explicit.params)


def test_per_example_rows_follow_the_batches(digits):
    seen = []

    def loss(apply_fn, params, x, y, *, rng, frozen, batch, opt_state):
        logits, new_params = hamjax.call_model(apply_fn, params, x, train=True, rng=rng)
        return distill.cross_entropy(logits, y), (logits, new_params, {"match": jnp.all(batch == y)})

    objective = hamjax.train.Objective(loss, per_example=np.asarray(digits.train.y))
    hamjax.fit(
        *_student(), digits, CONFIG, objective=objective, progress=False, callback=lambda s, st, m: seen.append(m)
    )
    assert seen and all(bool(m["match"]) for m in seen)
    with pytest.raises(ValueError, match="one row per training example"):
        bad = hamjax.train.Objective(loss, per_example=np.zeros(3))
        hamjax.fit(*_student(), digits, CONFIG, objective=bad, progress=False)


def test_cached_teacher_equals_online_teacher(digits, teacher):
    out = {
        c: distill.fit(*_student(), digits, CONFIG, teachers=teacher, cache=c, progress=False)
        for c in ("always", "never")
    }
    assert out["always"].cached and not out["never"].cached
    chex.assert_trees_all_close(out["always"].params, out["never"].params, rtol=1e-5, atol=1e-6)


def test_distillation_improves_on_an_untrained_start_and_beats_chance(digits, teacher):
    result = distill.fit(
        *_student(), digits, hamjax.TrainConfig(epochs=5, learning_rate=1e-2), teachers=teacher, progress=False
    )
    assert _accuracy(_student()[0], result.params, digits.test) > 0.6
    assert result.train.history[-1]["train_loss"] < result.train.history[0]["train_loss"]


def test_teacher_is_traced_once_whatever_the_number_of_steps(digits, teacher):
    apply_fn, params = teacher
    calls = []

    def counted(p, x, **kw):
        calls.append(1)
        return apply_fn(p, x, **kw)

    counts = []
    for epochs in (1, 3):
        calls.clear()
        distill.fit(
            *_student(),
            digits,
            hamjax.TrainConfig(epochs=epochs, batch_size=64),
            teachers=(hamjax.ApplyFn(lambda v, x, **kw: counted(v, x, **kw), apply_fn.collections), params),
            cache="never",
            progress=False,
        )
        counts.append(len(calls))
    assert counts[0] == counts[1] <= 4  # the checks and one jit trace, never one per step


def test_feature_attention_and_relational_terms_on_transformers(digits):
    t_apply, t_params = hamjax.functional(models.build("vit", input_shape=SHAPE, hidden_size=32, num_heads=4))
    s_apply, s_params = hamjax.functional(models.build("vit", input_shape=SHAPE, hidden_size=16, num_heads=2))
    terms = (
        distill.SoftTargets(),
        distill.HardLabels(),
        distill.Features("blocks/1", "blocks/1"),
        distill.AttentionProbs("blocks/1/attention", "blocks/1/attention"),
        distill.AttentionTransfer("blocks/0", "blocks/0"),
        distill.Relational(),
    )
    metrics = []
    result = distill.fit(
        s_apply,
        s_params,
        digits,
        CONFIG,
        teachers=(t_apply, t_params),
        terms=terms,
        progress=False,
        callback=lambda s, st, m: metrics.append(m),
    )
    assert result.adapters["2"]["kernel"].shape == (16, 32)  # the projection was learned
    assert set(result.adapters) == {"2"}
    names = {f"{type(t).__name__}/{i}" for i, t in enumerate(terms)}
    assert names <= set(metrics[-1])
    assert all(np.isfinite(float(metrics[-1][n])) for n in names)
    start = dict(zip(names, (float(metrics[0][n]) for n in names), strict=True))
    assert float(metrics[-1]["AttentionProbs/3"]) < start["AttentionProbs/3"]


def test_self_distillation_needs_no_teacher_and_trains_exit_heads(digits):
    apply_fn, params = hamjax.functional(models.build("cnn", input_shape=SHAPE, channels=(4, 8), dense=(16,)))
    term = distill.SelfDistillation(exits=("features/0", "features/1"))
    result = distill.fit(
        apply_fn, params, digits, hamjax.TrainConfig(epochs=4, learning_rate=1e-2), terms=(term,), progress=False
    )
    assert result.adapters["0"]["features/0"]["kernel"].shape == (4, 10)
    assert result.adapters["0"]["features/1"]["kernel"].shape == (8, 10)
    assert "batch_stats" in result.params  # the student keeps its own collections
    assert _accuracy(apply_fn, result.params, digits.test) > 0.6


def test_ema_teacher_reads_the_average_from_the_optimizer_state(digits):
    apply_fn, params = _student()
    states = []
    result = distill.fit(
        apply_fn,
        params,
        digits,
        CONFIG,
        teachers=distill.EmaTeacher(decay=0.9),
        terms=(distill.SoftTargets(weight=0.5), distill.HardLabels(1.0)),
        progress=False,
        callback=lambda s, st, m: states.append(jax.tree.map(np.asarray, (st.params, st.opt_state))),
    )
    assert not result.cached
    (_, s1), (p2, s2) = states[-2], states[-1]
    ema1 = optax.tree_utils.tree_get(s1, "ema")
    ema2 = optax.tree_utils.tree_get(s2, "ema")
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema1, p2["params"])
    chex.assert_trees_all_close(ema2, expected, rtol=1e-5, atol=1e-6)


def test_several_teachers_with_weights_and_a_linen_student(digits, teacher):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = x.reshape(x.shape[0], -1)
            x = nn.Dropout(0.1, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
            return nn.Dense(10)(x)

    module = Net()
    apply_fn, variables = hamjax.linen_functional(module, module.init(jax.random.key(0), jnp.ones((1, *SHAPE))))

    def plain_teacher(p, x):
        return x.reshape(x.shape[0], -1) @ p["w"]

    zeros = (plain_teacher, {"w": jnp.zeros((64, 10))})
    config = hamjax.TrainConfig(epochs=4, learning_rate=1e-2)
    result = distill.fit(
        apply_fn, variables, digits, config, teachers=[teacher, zeros], teacher_weights=(1.0, 0.0), progress=False
    )
    assert _accuracy(apply_fn, result.params, digits.test) > 0.6
    with pytest.raises(ValueError, match="teacher_weights"):
        distill.fit(
            apply_fn, variables, digits, CONFIG, teachers=[teacher, zeros], teacher_weights=(1.0,), progress=False
        )


def test_under_a_bf16_policy(digits, teacher):
    config = hamjax.TrainConfig(epochs=3, learning_rate=1e-2, precision="p=f32,c=bf16,o=f32")
    result = distill.fit(*_student(), digits, config, teachers=teacher, progress=False)
    assert result.params["params"]["layers"][0]["kernel"].dtype == jnp.float32
    assert result.train.history[-1]["val_accuracy"] > 0.6


def test_resume_after_an_interruption_gives_the_same_student(digits, teacher, tmp_path):
    config = hamjax.TrainConfig(epochs=2, batch_size=64, checkpoint_every=5)
    whole = distill.fit(*_student(), digits, config, teachers=teacher, progress=False)

    def stop(step, state, metrics):
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill.fit(
            *_student(), digits, config, teachers=teacher, checkpoint_dir=str(tmp_path), progress=False, callback=stop
        )
    resumed = distill.fit(*_student(), digits, config, teachers=teacher, checkpoint_dir=str(tmp_path), progress=False)
    assert resumed.train.resumed_from == 10
    chex.assert_trees_all_equal(whole.params, resumed.params)


def test_bad_input_is_named_before_training(digits, teacher):
    student = _student()
    wide = hamjax.functional(models.build("mlp", input_shape=SHAPE, sizes=(64, 16, 12)))
    with pytest.raises(ValueError, match=r"teacher 0 outputs shape \(4, 12\).*\(4, 10\)"):
        distill.fit(*student, digits, CONFIG, teachers=wide, progress=False)
    with pytest.raises(ValueError, match="temperature"):
        distill.SoftTargets(temperature=0.0)
    with pytest.raises(ValueError, match="nope"):
        distill.fit(
            *student, digits, CONFIG, teachers=teacher, terms=(distill.Features("nope", "embedding"),), progress=False
        )
    broken = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), teacher[1])
    for cache in ("always", "never"):
        with pytest.raises(ValueError, match="non-finite"):
            distill.fit(*student, digits, CONFIG, teachers=(teacher[0], broken), cache=cache, progress=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        distill.fit(*student, digits, CONFIG, progress=False)
    with pytest.raises(ValueError, match="cache"):
        distill.fit(*student, digits, CONFIG, teachers=teacher, cache="sometimes", progress=False)
    with pytest.raises(ValueError, match="cannot be cached"):
        distill.fit(*student, digits, CONFIG, teachers=distill.EmaTeacher(), cache="always", progress=False)
    with pytest.raises(ValueError, match="teacher 1"):
        distill.fit(
            *student, digits, CONFIG, teachers=teacher, terms=(distill.Relational(teacher_index=1),), progress=False
        )
    conv = hamjax.functional(models.build("cnn", input_shape=SHAPE, channels=(4,), dense=(16,)))
    with pytest.raises(ValueError, match="differ before the last axis"):
        distill.fit(
            *conv,
            digits,
            CONFIG,
            teachers=teacher,
            terms=(distill.Features("features/0", "embedding"),),
            progress=False,
        )
    with pytest.raises(ValueError, match="alpha"):
        distill.SelfDistillation(exits=("hidden/0",), alpha=2.0)


def test_bad_data_and_teachers_are_refused_before_anything_is_traced(digits, teacher):
    student = _student()
    with pytest.raises(
        ValueError,
        match=re.escape(
            "distill.fit: dataset must be a hamjax.data.Dataset, got a tuple of 2 items; "
            "make one with hamjax.data.from_arrays(x, y)"
        ),
    ):
        distill.fit(*student, (digits.train.x, digits.train.y), CONFIG, teachers=teacher, progress=False)
    nan_x = digits.train.x.copy()
    nan_x[0, 0, 0, 0] = np.nan
    with pytest.raises(
        ValueError, match=re.escape("distill.fit: dataset.train.x holds 1 non-finite values (NaN or inf)")
    ):
        distill.fit(
            *student,
            digits._replace(train=hamjax.data.Split(nan_x, digits.train.y)),
            CONFIG,
            teachers=teacher,
            progress=False,
        )
    with pytest.raises(
        ValueError,
        match=re.escape(
            "distill.fit: teachers must be an (apply_fn, params) pair or a sequence of them, got a function alone "
            "(ApplyFn); pass teachers=(apply_fn, params)"
        ),
    ):
        distill.fit(*student, digits, CONFIG, teachers=teacher[0], progress=False)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "distill.fit: teachers must be an (apply_fn, params) pair or a sequence of them, got a dict with keys ['t']"
        ),
    ):
        distill.fit(*student, digits, CONFIG, teachers={"t": teacher}, progress=False)
    with pytest.raises(
        ValueError, match=re.escape("distill.fit: teachers[1] must be an (apply_fn, params) pair, got int")
    ):
        distill.fit(*student, digits, CONFIG, teachers=[teacher, 3], progress=False)


def test_one_teacher_as_a_pair_tuple_or_list_is_one_teacher(digits):
    student = _student()
    wide = hamjax.functional(models.build("mlp", input_shape=SHAPE, sizes=(64, 16, 12)))
    # a (apply_fn, params) pair, tuple or list, is one teacher: the shape check reaches teacher 0 and no teacher 1
    for teachers in (wide, list(wide), [wide]):
        with pytest.raises(
            ValueError, match=re.escape("distill.fit: teacher 0 outputs shape (4, 12) on four examples")
        ):
            distill.fit(*student, digits, CONFIG, teachers=teachers, progress=False)


def _linear(seed):
    """A plain jnp model without bias: zero inputs give zero logits."""
    w = jax.random.normal(jax.random.key(seed), (64, 10)) / 8.0
    return (lambda p, x: x.reshape(x.shape[0], -1) @ p["w"]), {"w": w}


def test_augment_is_the_view_of_the_student_and_of_the_online_teacher(digits):
    teacher, student = _linear(0), _linear(1)
    terms = (distill.SoftTargets(2.0, 1.0),)
    seen = []

    def run(augment, config=CONFIG):
        seen.clear()
        return distill.fit(
            *student,
            digits,
            config,
            teachers=teacher,
            terms=terms,
            augment=augment,
            progress=False,
            callback=lambda s, st, m: seen.append(float(m["SoftTargets/0"])),
        )

    plain = run(None)
    assert plain.cached and min(seen) > 0.01
    # both see zeros, so both give zero logits and the loss is zero: a teacher on the clean batch would not be
    blank = run(lambda key, x: jnp.zeros_like(x))
    assert not blank.cached and max(seen) == 0.0
    chex.assert_trees_all_equal(blank.params, student[1])
    # the config's own augmentation reaches the objective as x: the teacher must run online on it too
    blank_config = dataclasses.replace(CONFIG, augment=lambda key, x: jnp.zeros_like(x))
    from_config = run(None, blank_config)
    assert not from_config.cached and max(seen) == 0.0


def test_without_a_changing_view_the_result_is_unchanged(digits, teacher):
    # an identity view runs the teacher online on the same inputs and leaves the student's keys alone
    dropout_student = hamjax.functional(models.build("mlp", input_shape=SHAPE, sizes=(64, 16, 10), dropout_rate=0.3))
    base = distill.fit(*dropout_student, digits, CONFIG, teachers=teacher, progress=False)
    same = distill.fit(*dropout_student, digits, CONFIG, teachers=teacher, augment=lambda k, x: x, progress=False)
    assert base.cached and not same.cached
    chex.assert_trees_all_close(base.params, same.params, rtol=1e-5, atol=1e-6)


def test_dropout_teacher_is_deterministic_per_seed_and_differs_from_eval(digits):
    wide = hamjax.functional(models.build("mlp", input_shape=SHAPE, sizes=(64, 64, 10), dropout_rate=0.5, seed=3))

    def run(method, seed):
        config = dataclasses.replace(CONFIG, seed=seed)
        return distill.fit(*_student(), digits, config, teachers=wide, teacher_method=method, progress=False)

    first, again, clean, other_seed = run("dropout", 0), run("dropout", 0), run("eval", 0), run("dropout", 1)
    assert not first.cached and clean.cached
    chex.assert_trees_all_equal(first.params, again.params)
    for other in (clean, other_seed):
        diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), first.params, other.params)
        assert max(jax.tree.leaves(diff)) > 1e-4


def test_function_matching_arguments_are_refused_before_tracing(digits, teacher):
    student = _student()
    cases = [
        ({"teacher_method": "train"}, "distill.fit: teacher_method must be one of"),
        ({"teacher_noise": -1.0}, "distill.fit: teacher_noise must be"),
        ({"augment": "shift"}, "distill.fit: augment parse('shift'): item 'shift' must read name=value"),
        ({"augment": 3}, "distill.fit: augment must be None, a spec string such as 'shift=2,rotate=10' or a function"),
        ({"mixup": -1.0}, "distill.fit: mixup must be"),
        ({"augment": lambda k, x: x[..., :1, :]}, "distill.fit: augment must return a batch shaped like its input"),
        ({"augment": lambda k, x: x, "cache": "always"}, "so their outputs cannot be cached; use cache='auto'"),
        ({"teacher_method": "dropout", "cache": "always"}, "so their outputs cannot be cached"),
        ({"mixup": 0.2, "cache": "always"}, "so their outputs cannot be cached"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            distill.fit(*student, digits, CONFIG, teachers=teacher, progress=False, **kw)


def test_mixup_mixes_the_shared_view_and_the_labels(digits, teacher):
    terms = (distill.SoftTargets(2.0, 0.5), distill.HardLabels(0.5))
    base = distill.fit(*_student(), digits, CONFIG, teachers=teacher, terms=terms, progress=False)
    mixed = distill.fit(*_student(), digits, CONFIG, teachers=teacher, terms=terms, mixup=0.4, progress=False)
    assert base.cached and not mixed.cached
    diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), base.params, mixed.params)
    assert max(jax.tree.leaves(diff)) > 1e-4
    assert np.isfinite(mixed.train.history[-1]["train_loss"])
