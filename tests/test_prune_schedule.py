"""Pruning transforms, schedules, masked_optimizer and iterative_prune."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hamjax
from hamjax import prune
from hamjax.train import TrainConfig, evaluate, fit, make_optimizer


def _tree(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "a": {"kernel": jax.random.normal(k[0], (20, 40)), "bias": jnp.linspace(-1, 1, 40)},
        "b": {"kernel": 3.0 * jax.random.normal(k[1], (40, 12)), "bias": jnp.ones(12)},
        "norm": {"scale": jnp.ones(12)},
    }


def _zeros(tree) -> dict[str, int]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): int((x == 0).sum()) for p, x in leaves}


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    ("make", "masks_fn"),
    [
        (lambda: prune.magnitude_prune(0.5), lambda p: prune.magnitude_masks(p, 0.5)),
        (lambda: prune.global_magnitude_prune(0.5), lambda p: prune.magnitude_masks(p, 0.5, scope="global")),
        (lambda: prune.nm_prune(1, 4), lambda p: prune.nm_masks(p, 1, 4)),
        (lambda: prune.block_prune(0.5, block=(4, 4)), lambda p: prune.block_masks(p, 0.5)),
    ],
    ids=["magnitude", "global", "nm", "block"],
)
def test_transforms_apply_their_masks(make, masks_fn):
    params = _tree()
    t = make()
    state = t.init(params)
    assert state.count == 0 and bool(jax.tree.reduce(lambda a, b: a & b.all(), state.masks, True))
    out, state = t.apply(params, state, unused=1)
    expected = prune.apply_masks(params, masks_fn(params))
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(out["a"]["bias"], params["a"]["bias"])
    assert state.count == 1 and state.masks["a"]["bias"] is None
    again, state = t.apply(out, state)  # idempotent on already-pruned params
    assert _zeros(again) == _zeros(out) and state.count == 2


def test_random_prune_masks_are_fixed_at_init_and_seeded():
    params = _tree()
    t = prune.random_prune(0.25, seed=3)
    state = t.init(params)
    out1, state = t.apply(params, state)
    out2, _ = t.apply(jax.tree.map(lambda x: x + 1.0, params), state)
    np.testing.assert_array_equal(out1["a"]["kernel"] == 0, out2["a"]["kernel"] == 0)
    assert _zeros(out1)["['a']['kernel']"] == 200 and _zeros(out1)["['b']['kernel']"] == 120
    other = prune.random_prune(0.25, seed=4)
    assert not np.array_equal(other.init(params).masks["a"]["kernel"], state.masks["a"]["kernel"])


def test_saliency_prune_reads_grads():
    params = _tree()
    grads = jax.tree.map(jnp.cos, params)
    t = prune.saliency_prune(0.7)
    out, state = t.apply(params, t.init(params), grads=grads)
    masks = prune.saliency_masks(params, grads, 0.7)
    assert sum(_zeros(out).values()) == math.floor(0.7 * (800 + 480))
    np.testing.assert_array_equal(state.masks["b"]["kernel"], masks["b"]["kernel"])
    with pytest.raises(ValueError, match="saliency_prune: apply needs grads="):
        t.apply(params, t.init(params))


def test_movement_scores_accumulate_and_prefer_moving_away_from_zero():
    params = {"w": jnp.array([[1.0, 1.0, -2.0, -2.0], [0.5, -0.5, 3.0, 0.1]])}
    grads = {"w": jnp.array([[-1.0, 1.0, 1.0, -1.0], [2.0, 2.0, 0.0, -0.3]])}
    t = prune.movement_prune(0.5)
    state = t.init(params)
    np.testing.assert_array_equal(state.scores["w"], np.zeros((2, 4)))
    _, state = t.apply(params, state, grads=grads)
    _, state = t.apply(params, state, grads=grads)
    expected = -2 * params["w"] * grads["w"]
    np.testing.assert_allclose(state.scores["w"], expected)
    # w g < 0: gradient descent grows |w|, so those weights are kept
    np.testing.assert_array_equal(state.masks["w"], expected > 0)
    assert state.count == 2
    with pytest.raises(ValueError, match="movement_prune: apply needs grads="):
        t.apply(params, state)
    with pytest.raises(ValueError, match=r"grads do not match params"):
        t.apply(params, state, grads={"v": grads["w"]})


def test_transforms_chain_and_vmap_over_sparsity():
    params = _tree()

    def run(s):
        t = hamjax.chain(prune.magnitude_prune(s), hamjax.identity())
        out, _ = t.apply(params, t.init(params))
        return out

    out = jax.jit(jax.vmap(run))(jnp.array([0.0, 0.25, 0.5, 0.9]))
    for i, s in enumerate([0.0, 0.25, 0.5, 0.9]):
        assert int((out["a"]["kernel"][i] == 0).sum()) == math.floor(s * 800)
        assert int((out["b"]["kernel"][i] == 0).sum()) == math.floor(s * 480)


def test_transform_factories_validate_before_tracing():
    with pytest.raises(ValueError, match=r"magnitude_prune: sparsity must be a scalar in \[0, 1\), got 1.5"):
        prune.magnitude_prune(1.5)
    with pytest.raises(ValueError, match="scope must be one of"):
        prune.saliency_prune(0.5, scope="net")
    with pytest.raises(ValueError, match="n must be <= m"):
        prune.nm_prune(3, 2)
    with pytest.raises(ValueError, match="block must be two integers"):
        prune.block_prune(0.5, block=4)
    with pytest.raises(ValueError, match="filter must be a callable"):
        prune.random_prune(0.5, filter=3)
    with pytest.raises(ValueError, match="movement_prune: sparsity"):
        prune.movement_prune(-0.5)


# ---------------------------------------------------------------- schedules


def test_polynomial_schedule_follows_zhu_gupta():
    s_i, s_f, t0, end, freq = 0.1, 0.8, 5, 25, 4
    schedule = prune.polynomial_schedule(s_f, initial_sparsity=s_i, begin_step=t0, end_step=end, frequency=freq)
    got = jax.jit(jax.vmap(schedule))(jnp.arange(40))
    for t in range(40):
        tq = min(max(t, t0), end)
        tq = end if tq >= end else t0 + (tq - t0) // freq * freq
        want = s_f + (s_i - s_f) * (1 - (tq - t0) / (end - t0)) ** 3
        assert float(got[t]) == pytest.approx(want, abs=1e-6), t
    assert float(got[0]) == pytest.approx(s_i) and float(got[end]) == pytest.approx(s_f)
    assert float(prune.constant_schedule(0.3)(7)) == pytest.approx(0.3)


def test_schedule_errors():
    with pytest.raises(ValueError, match="end_step must be an integer >= 6"):
        prune.polynomial_schedule(0.5, begin_step=5, end_step=5)
    with pytest.raises(ValueError, match="frequency must be an integer >= 1"):
        prune.polynomial_schedule(0.5, end_step=5, frequency=0)
    with pytest.raises(ValueError, match="power must be a number > 0"):
        prune.polynomial_schedule(0.5, end_step=5, power=0)
    with pytest.raises(ValueError, match=r"final_sparsity must be a scalar in \[0, 1\)"):
        prune.polynomial_schedule(1.0, end_step=5)
    with pytest.raises(ValueError, match="initial_sparsity"):
        prune.polynomial_schedule(0.5, initial_sparsity=2.0, end_step=5)


# ---------------------------------------------------------------- masked_optimizer


def _quadratic_step(opt, jit=True):
    target = jax.tree.map(lambda x: x + 1.0, _tree(seed=1))

    def loss(p):
        return sum(jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True))

    def step(params, state):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step) if jit else step


def test_masked_optimizer_keeps_pruned_weights_zero_through_50_adam_steps():
    params = _tree()
    masks = prune.magnitude_masks(params, 0.6)
    opt = prune.masked_optimizer(optax.adam(1e-2), masks)
    state, step = opt.init(params), _quadratic_step(opt)
    start = params  # not yet pruned: the first update zeros the pruned weights
    for _ in range(50):
        params, state = step(params, state)
        for m, w in ((masks["a"]["kernel"], params["a"]["kernel"]), (masks["b"]["kernel"], params["b"]["kernel"])):
            assert (np.asarray(w)[~np.asarray(m)] == 0).all()
            assert (np.asarray(w)[np.asarray(m)] != 0).all()
    assert not np.allclose(params["a"]["bias"], start["a"]["bias"])  # unmasked leaves train
    assert int(state.step) == 50
    assert prune.sparsity_of(params) == pytest.approx(math.floor(0.6 * 800 + 0.6 * 480) / 1280, abs=1e-3)


def test_masked_optimizer_in_a_chain_exposes_masks_through_tree_get():
    params = _tree()
    masks = prune.magnitude_masks(params, 0.5)
    opt = optax.chain(optax.clip_by_global_norm(1.0), prune.masked_optimizer(optax.sgd(0.1), masks))
    state = opt.init(params)
    params, state = _quadratic_step(opt)(params, state)
    got = optax.tree_utils.tree_get(state, "masks")
    np.testing.assert_array_equal(got["a"]["kernel"], masks["a"]["kernel"])
    assert (np.asarray(params["a"]["kernel"])[~np.asarray(masks["a"]["kernel"])] == 0).all()


@pytest.mark.parametrize("pruner", ["magnitude", "global_magnitude", "movement"])
def test_gradual_pruning_reaches_final_sparsity_at_end_step(pruner):
    params = _tree()
    schedule = prune.polynomial_schedule(0.8, begin_step=2, end_step=12, frequency=2)
    opt = prune.masked_optimizer(optax.adam(1e-2), pruner=pruner, schedule=schedule)
    state, step = opt.init(params), _quadratic_step(opt)
    for t in range(1, 21):
        params, state = step(params, state)
        pruned = {k: int((~state.masks[k]["kernel"]).sum()) for k in ("a", "b")}
        s = np.float32(schedule(t))
        if pruner == "global_magnitude":
            assert pruned["a"] + pruned["b"] == math.floor(s * 1280), t
        else:
            assert pruned == {"a": math.floor(s * 800), "b": math.floor(s * 480)}, t
        for k in ("a", "b"):
            w, m = np.asarray(params[k]["kernel"]), np.asarray(state.masks[k]["kernel"])
            assert (w[~m] == 0).all()
            # magnitude never regrows; movement may re-admit a weight, which restarts from zero
            assert (w[m] != 0).all() or pruner == "movement"
        assert _zeros(params)["['a']['bias']"] == 0
    assert prune.sparsity_of(params, state.masks) == pytest.approx(0.8)
    if pruner == "movement":
        assert state.scores["a"]["kernel"].dtype == jnp.float32 and state.scores["a"]["bias"] is None


def test_update_every_recomputes_masks_only_on_its_steps():
    params = _tree()
    opt = prune.masked_optimizer(optax.sgd(1e-2), pruner="magnitude", schedule=0.5, update_every=3)
    state, step = opt.init(params), _quadratic_step(opt)
    counts = []
    for _ in range(6):
        params, state = step(params, state)
        counts.append(_zeros(params)["['a']['kernel']"])
    assert counts == [0, 0, 400, 400, 400, 400]


def test_masked_optimizer_vmaps_over_final_sparsity():
    params = _tree()

    def run(s):
        opt = prune.masked_optimizer(
            optax.sgd(1e-2), pruner="magnitude", schedule=prune.polynomial_schedule(s, end_step=4)
        )
        state = opt.init(params)
        step = _quadratic_step(opt, jit=False)
        p = params
        for _ in range(5):
            p, state = step(p, state)
        return p

    out = jax.jit(jax.vmap(run))(jnp.array([0.25, 0.5, 0.9]))
    for i, s in enumerate([0.25, 0.5, 0.9]):
        assert int((out["a"]["kernel"][i] == 0).sum()) == math.floor(s * 800)


def test_masked_optimizer_errors():
    params = _tree()
    with pytest.raises(ValueError, match="give masks= .* or schedule="):
        prune.masked_optimizer(optax.sgd(0.1))
    with pytest.raises(ValueError, match="pruner must be one of"):
        prune.masked_optimizer(optax.sgd(0.1), schedule=0.5, pruner="snip")
    with pytest.raises(ValueError, match="schedule= needs a pruner"):
        prune.masked_optimizer(optax.sgd(0.1), schedule=0.5, pruner=None)
    with pytest.raises(ValueError, match="update_every must be an integer >= 1"):
        prune.masked_optimizer(optax.sgd(0.1), schedule=0.5, update_every=0)
    opt = prune.masked_optimizer(optax.sgd(0.1), {"a": None})
    with pytest.raises(ValueError, match=r"masks do not match params: first mismatch at \['a'\]\['bias'\]"):
        opt.init(params)
    opt = prune.masked_optimizer(optax.sgd(0.1), prune.magnitude_masks(params, 0.5))
    with pytest.raises(ValueError, match="update needs params="):
        opt.update(params, opt.init(params))


# ---------------------------------------------------------------- training


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(64)(x)))
        return nn.Dense(10)(x)


def _plain():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (64, 64)) / 8.0,
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 10)) / 8,
    }

    def apply_fn(p, x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None]) @ p["w2"]

    return apply_fn, params


def _kind(kind):
    if kind == "nnx":
        return hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))
    if kind == "linen":
        model = _LinenMLP()
        return hamjax.linen_functional(model, model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1))))
    return _plain()


@pytest.mark.parametrize("kind", ["nnx", "linen", "plain"])
def test_fit_with_masked_optimizer_on_all_model_kinds(kind, digits):
    apply_fn, params = _kind(kind)
    config = TrainConfig(epochs=5, batch_size=64, learning_rate=5e-3)
    tp = hamjax._base.trainable(apply_fn, params)
    masks = prune.magnitude_masks(tp, 0.7)
    params = hamjax._base.with_trainable(apply_fn, params, prune.apply_masks(tp, masks))
    opt = prune.masked_optimizer(make_optimizer(config, 100), masks)
    result = fit(apply_fn, params, digits, config, optimizer=opt, progress=False)
    trained = hamjax._base.trainable(apply_fn, result.state.params)
    for frac in prune.layer_sparsities(trained).values():
        assert frac == pytest.approx(0.7, abs=1e-3)
    assert prune.sparsity_of(trained, masks) == prune.sparsity_of(trained)
    assert evaluate(apply_fn, result.params, digits.val)["accuracy"] > 0.8


def test_iterative_prune_reaches_90_percent_on_digits(digits):
    apply_fn, params = _kind("nnx")
    config = TrainConfig(epochs=5, batch_size=64, learning_rate=4e-3)
    out, masks, history = prune.iterative_prune(apply_fn, params, digits, [0.5, 0.75, 0.9], config)
    assert [h["target_sparsity"] for h in history] == [0.5, 0.75, 0.9]
    layers = prune.layer_sparsities(out["params"])
    assert layers == {
        "['layers'][0]['kernel']": math.floor(0.9 * 4096) / 4096,
        "['layers'][1]['kernel']": math.floor(0.9 * 640) / 640,
    }
    assert history[-1]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert history[-1]["val_accuracy"] > 0.85
    assert evaluate(apply_fn, out, digits.val)["accuracy"] == history[-1]["val_accuracy"]
    assert not np.asarray(out["params"]["layers"][0]["bias"] == 0).all()
    prune.check_masks(out["params"], masks)


@pytest.mark.parametrize("method", ["random", "saliency", "global_magnitude", "block"])
def test_iterative_prune_methods_are_exactly_sparse(method, digits):
    apply_fn, params = _plain()
    config = TrainConfig(epochs=1, batch_size=128, learning_rate=3e-3)
    filt = (lambda p, x: x.shape == (64, 64)) if method == "block" else None
    out, masks, history = prune.iterative_prune(
        apply_fn, params, digits, [0.5, 0.8], config, method=method, filter=filt
    )
    final = math.floor(0.8 * 256) / 256 if method == "block" else 0.8  # 256 tiles of 4x4
    assert [h["sparsity"] for h in history] == pytest.approx([0.5, final], abs=1e-3)
    assert prune.sparsity_of(out, masks) == pytest.approx(final, abs=1e-3)


def test_iterative_prune_errors(digits):
    apply_fn, params = _plain()
    config = TrainConfig(epochs=1, batch_size=128)
    with pytest.raises(ValueError, match="method must be one of"):
        prune.iterative_prune(apply_fn, params, digits, [0.5], config, method="nm")
    with pytest.raises(ValueError, match="at least one target"):
        prune.iterative_prune(apply_fn, params, digits, [], config)
    with pytest.raises(ValueError, match=r"sparsities must be a scalar in \[0, 1\), got 1.2"):
        prune.iterative_prune(apply_fn, params, digits, [0.5, 1.2], config)
