import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_models import random_model
from scipy.stats import spearmanr

import hamjax
from hamjax import train
from hamjax.autotune.sensitivity import DEFAULT_LEVELS, Sensitivity, layer_ablation, layer_sensitivity
from hamjax.models import build


@pytest.fixture(scope="module")
def tiny(digits):
    apply_fn, _, variables = random_model("mlp", sizes=(64, 16, 16, 10), input_shape=(8, 8, 1))
    return apply_fn, variables, digits.val.x, digits.val.y


@pytest.mark.parametrize(("method", "levels"), [("quantize", (8, 3, 2)), ("prune", (0.3, 0.6, 0.9))])
def test_the_vmapped_call_equals_the_ablation_loop(tiny, method, levels):
    apply_fn, variables, x, y = tiny
    fast = layer_sensitivity(apply_fn, variables, x, y, method=method, levels=levels)
    slow = layer_ablation(apply_fn, variables, x, y, method=method, levels=levels)
    names = tuple(f"['params']['layers'][{i}]['kernel']" for i in range(3))
    assert fast.names == slow.names == names
    assert fast.levels == slow.levels == levels
    assert fast.drops.shape == (3, 3)
    assert fast.baseline == slow.baseline
    np.testing.assert_allclose(fast.drops, slow.drops, atol=1e-9)
    assert fast.ranking == slow.ranking
    assert np.abs(fast.drops).max() > 0  # the levels reach far enough to change predictions


def test_drops_are_accuracy_points_of_the_modified_model(tiny):
    apply_fn, variables, x, y = tiny
    s = layer_sensitivity(apply_fn, variables, x, y, method="prune", levels=(0.95,))
    # Layer 1 pruned to 95% by hand: its accuracy drop is what the call reports.
    w = variables["params"]["layers"][1]["kernel"]
    cut = np.sort(np.abs(np.asarray(w)).ravel())[int(0.95 * w.size)]
    pruned = jax.tree.map(lambda a: a, variables)
    pruned["params"]["layers"][1]["kernel"] = jnp.where(jnp.abs(w) >= cut, w, 0.0)
    accuracy = 100 * np.mean(np.argmax(np.asarray(apply_fn(pruned, x)), -1) == np.asarray(y))
    base = 100 * np.mean(np.argmax(np.asarray(apply_fn(variables, x)), -1) == np.asarray(y))
    assert s.baseline == pytest.approx(base)
    assert s.drops[1, 0] == pytest.approx(base - accuracy)


def test_ranking_is_by_mean_drop_and_ties_keep_params_order(tiny):
    apply_fn, variables, x, y = tiny
    s = layer_sensitivity(apply_fn, variables, x, y, method="prune", levels=(0.5, 0.9, 0.95))
    mean = s.drops.mean(axis=1)
    assert len(set(mean.tolist())) == 3
    assert s.ranking == tuple(s.names[i] for i in np.argsort(-mean))
    untouched = layer_sensitivity(apply_fn, variables, x, y, method="prune", levels=(0.0,))
    assert untouched.drops.tolist() == [[0.0], [0.0], [0.0]]
    assert untouched.ranking == untouched.names


def test_a_filter_chooses_the_layers(tiny):
    apply_fn, variables, x, y = tiny
    s = layer_sensitivity(
        apply_fn, variables, x, y, levels=(4,), filter=lambda path, leaf: "[0]" in jax.tree_util.keystr(path)
    )
    assert s.names == ("['params']['layers'][0]['bias']", "['params']['layers'][0]['kernel']")
    assert s.drops.shape == (2, 1)


def test_default_levels_and_the_result_type(tiny):
    apply_fn, variables, x, y = tiny
    s = layer_sensitivity(apply_fn, variables, x[:40], y[:40])
    assert isinstance(s, Sensitivity)
    assert s.levels == DEFAULT_LEVELS["quantize"] == (8, 4, 2)
    assert DEFAULT_LEVELS["prune"] == (0.5, 0.75, 0.9)


@pytest.mark.parametrize(
    ("kw", "phrase"),
    [
        ({"method": "distill"}, "layer_sensitivity: method must be one of ('quantize', 'prune'), got 'distill'"),
        ({"levels": ()}, "layer_sensitivity: levels must be a non-empty sequence"),
        ({"levels": (8, 1)}, "layer_sensitivity: levels must be an integer in [2, 16], got 1"),
        ({"levels": (17,)}, "layer_sensitivity: levels must be an integer in [2, 16], got 17"),
        ({"method": "prune", "levels": (0.5, 1.0)}, "layer_sensitivity: levels must be a scalar in [0, 1), got 1.0"),
        ({"method": "prune", "levels": (-0.1,)}, "layer_sensitivity: levels must be a scalar in [0, 1), got -0.1"),
    ],
)
def test_bad_arguments_are_refused_before_tracing(kw, phrase):
    def never(p, x):
        raise AssertionError("traced")

    with pytest.raises(ValueError) as info:
        layer_sensitivity(never, {"w": jnp.ones((2, 2))}, jnp.ones((3, 2)), jnp.zeros(3, jnp.int32), **kw)
    assert phrase in str(info.value)


def test_x_and_y_of_different_lengths_are_refused_by_both():
    for fn in (layer_sensitivity, layer_ablation):
        with pytest.raises(ValueError, match=r"y must be a vector with one label per row of x"):
            fn(lambda p, x: x @ p["w"], {"w": jnp.ones((2, 2))}, jnp.ones((3, 2)), jnp.zeros(4, jnp.int32))


@pytest.fixture(scope="module")
def trained(digits):
    """The reference MLP and CNN trained briefly on digits, built once per module."""
    made = {}

    def get(name, overrides):
        if name not in made:
            model = build(name, input_shape=digits.input_shape, num_classes=digits.num_classes, **overrides)
            apply_fn, variables = hamjax.functional(model)
            config = train.TrainConfig(epochs=6, batch_size=64, learning_rate=3e-3, seed=0)
            made[name] = apply_fn, train.fit(apply_fn, variables, digits, config, progress=False).params
        return made[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides"), [("mlp", {"sizes": (64, 64, 64, 32, 10)}), ("cnn", {"channels": (6, 12), "dense": (32,)})]
)
@pytest.mark.parametrize("method", ["quantize", "prune"])
def test_ranking_agrees_with_per_layer_ablation_on_trained_models(digits, trained, name, overrides, method):
    apply_fn, variables = trained(name, overrides)
    x, y = digits.val.x, digits.val.y
    levels = (4, 3, 2) if method == "quantize" else (0.7, 0.85, 0.95)
    fast = layer_sensitivity(apply_fn, variables, x, y, method=method, levels=levels)
    reference = layer_ablation(apply_fn, variables, x, y, method=method, levels=levels)
    assert fast.baseline > 75.0  # trained: chance is 10%
    rho = spearmanr(fast.drops.mean(axis=1).round(9), reference.drops.mean(axis=1).round(9)).statistic
    order = [reference.ranking.index(n) for n in fast.ranking]
    assert rho >= 0.8, (fast.drops, reference.drops)
    assert spearmanr(order, range(len(order))).statistic >= 0.8
    assert len(fast.names) >= 4
    assert len(set(fast.drops.mean(axis=1).round(6).tolist())) >= 3  # a ranking with something to rank


def test_an_nnx_model_and_its_plain_twin_have_equal_drops(digits):
    nnx_model = nnx.Linear(64, 10, rngs=nnx.Rngs(0))
    apply_fn, variables = hamjax.functional(nnx_model)
    x, y = digits.val.x.reshape(-1, 64), digits.val.y
    w, b = variables["params"]["kernel"], variables["params"]["bias"]
    nnx_side = layer_sensitivity(apply_fn, variables, x, y, method="prune", levels=(0.5, 0.9))
    plain = layer_sensitivity(
        lambda p, x: x @ p["w"] + p["b"][None], {"w": w, "b": b}, x, y, method="prune", levels=(0.5, 0.9)
    )
    np.testing.assert_allclose(nnx_side.drops, plain.drops)
