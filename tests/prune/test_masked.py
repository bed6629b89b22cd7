"""masked_optimizer: pruned weights stay zero through training; gradual pruning reaches its target exactly."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from param_trees import param_tree, zero_counts

import hamjax
from hamjax import prune
from hamjax.train import TrainConfig, evaluate, fit, make_optimizer


def _quadratic_step(opt, jit=True):
    target = jax.tree.map(lambda x: x + 1.0, param_tree(seed=1))

    def loss(p):
        return sum(jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True))

    def step(params, state):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step) if jit else step


def test_masked_optimizer_keeps_pruned_weights_zero_through_50_adam_steps():
    params = param_tree()
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
    assert int(state.count) == 50
    assert prune.sparsity_of(params) == pytest.approx(math.floor(0.6 * 800 + 0.6 * 480) / 1280, abs=1e-3)


def test_masked_optimizer_in_a_chain_exposes_masks_through_tree_get():
    params = param_tree()
    masks = prune.magnitude_masks(params, 0.5)
    opt = optax.chain(optax.clip_by_global_norm(1.0), prune.masked_optimizer(optax.sgd(0.1), masks))
    state = opt.init(params)
    params, state = _quadratic_step(opt)(params, state)
    got = optax.tree_utils.tree_get(state, "masks")
    np.testing.assert_array_equal(got["a"]["kernel"], masks["a"]["kernel"])
    assert (np.asarray(params["a"]["kernel"])[~np.asarray(masks["a"]["kernel"])] == 0).all()


@pytest.mark.parametrize("method", prune.SCHEDULED_METHODS)
def test_gradual_pruning_reaches_final_sparsity_at_end_step(method):
    params = param_tree()
    schedule = prune.polynomial_schedule(0.8, begin_step=2, end_step=12, update_every=2)
    opt = prune.masked_optimizer(optax.adam(1e-2), method=method, schedule=schedule)
    state, step = opt.init(params), _quadratic_step(opt)
    for t in range(1, 21):
        params, state = step(params, state)
        pruned = {k: int((~state.masks[k]["kernel"]).sum()) for k in ("a", "b")}
        s = np.float32(schedule(t))
        if method == "global_magnitude":
            assert pruned["a"] + pruned["b"] == math.floor(s * 1280), t
        else:
            assert pruned == {"a": math.floor(s * 800), "b": math.floor(s * 480)}, t
        for k in ("a", "b"):
            w, m = np.asarray(params[k]["kernel"]), np.asarray(state.masks[k]["kernel"])
            assert (w[~m] == 0).all()
            # magnitude never regrows; movement may re-admit a weight, which restarts from zero
            assert (w[m] != 0).all() or method == "movement"
        assert zero_counts(params)["['a']['bias']"] == 0
    assert prune.sparsity_of(params, state.masks) == pytest.approx(0.8)
    if method == "movement":
        assert state.scores["a"]["kernel"].dtype == jnp.float32 and state.scores["a"]["bias"] is None


def test_update_every_recomputes_masks_only_on_its_steps():
    params = param_tree()
    opt = prune.masked_optimizer(optax.sgd(1e-2), method="magnitude", schedule=0.5, update_every=3)
    state, step = opt.init(params), _quadratic_step(opt)
    counts = []
    for _ in range(6):
        params, state = step(params, state)
        counts.append(zero_counts(params)["['a']['kernel']"])
    assert counts == [0, 0, 400, 400, 400, 400]


def test_masked_optimizer_vmaps_over_final_sparsity():
    params = param_tree()

    def run(s):
        opt = prune.masked_optimizer(
            optax.sgd(1e-2), method="magnitude", schedule=prune.polynomial_schedule(s, end_step=4)
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
    params = param_tree()
    with pytest.raises(ValueError, match="give masks= .* or schedule="):
        prune.masked_optimizer(optax.sgd(0.1))
    with pytest.raises(ValueError, match="masked_optimizer: method must be one of .*, got 'snip'"):
        prune.masked_optimizer(optax.sgd(0.1), schedule=0.5, method="snip")
    with pytest.raises(ValueError, match="schedule= needs a method"):
        prune.masked_optimizer(optax.sgd(0.1), schedule=0.5, method=None)
    with pytest.raises(ValueError, match="update_every must be an integer >= 1"):
        prune.masked_optimizer(optax.sgd(0.1), schedule=0.5, update_every=0)
    opt = prune.masked_optimizer(optax.sgd(0.1), {"a": None})
    with pytest.raises(ValueError, match=r"masks do not match params: first mismatch at \['a'\]\['bias'\]"):
        opt.init(params)
    opt = prune.masked_optimizer(optax.sgd(0.1), prune.magnitude_masks(params, 0.5))
    with pytest.raises(ValueError, match="update needs params="):
        opt.update(params, opt.init(params))


def test_fit_with_masked_optimizer_on_all_model_kinds(any_model, digits):
    apply_fn, params = any_model
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
