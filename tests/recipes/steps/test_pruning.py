"""The ``prune`` recipe step on real (small) models and data."""

import jax
import numpy as np
import pytest
from reference_models import row_token_model

import hamjax
from hamjax import recipes
from hamjax.recipes import RecipeError


def _context(digits, *, with_config=True, sizes=(64, 64, 32, 10)):
    module = hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=sizes)
    apply_fn, params = hamjax.functional(module)
    config = hamjax.models.config_of(module) if with_config else None
    return recipes.Context(apply_fn, params, digits, progress=False, config=config)


def _recipe(*steps):
    # digits has 1,258 training images: finetuning needs a higher rate and smaller batches than the defaults
    tune = {"learning_rate": 2e-3, "batch_size": 64}
    steps = [s if s["kind"] != "prune" else {**tune, **s} for s in steps]
    return recipes.validate(
        {"name": "t", "steps": [{"kind": "train", "epochs": 15, "batch_size": 64, "learning_rate": 3e-3}, *steps]}
    )


def _kernel_sparsity(params):
    kernels = [np.asarray(layer["kernel"]) for layer in params["params"]["layers"].values()]
    return [float(np.mean(k == 0)) for k in kernels]


@pytest.mark.parametrize(
    "method",
    # saliency and block take 10-15 s each (saliency's gradient pass, block's finetune): the slow run keeps them
    [
        "magnitude",
        "global_magnitude",
        "random",
        pytest.param("saliency", marks=pytest.mark.slow),
        pytest.param("block", marks=pytest.mark.slow),
    ],
)
def test_unstructured_one_shot_prunes_and_keeps_sparsity_through_finetuning(digits, method):
    ctx = recipes.run(
        _recipe({"kind": "prune", "method": method, "sparsity": 0.75, "finetune_epochs": 3, "block": 2}),
        _context(digits),
    )
    dense, pruned = ctx.stages
    assert (dense.name, pruned.name) == ("dense", "pruned")
    kernels = hamjax.prune.sparsity_of(ctx.params["params"])
    assert kernels == pytest.approx(0.75, abs=0.01)
    if method in ("magnitude", "random", "block"):
        assert _kernel_sparsity(ctx.params) == pytest.approx([0.75, 0.75, 0.75], abs=0.01)
    assert pruned.param_count < 0.35 * dense.size_bytes / 4
    acc = hamjax.train.evaluate(ctx.apply_fn, ctx.params, digits.test)["accuracy"]
    assert acc > (0.3 if method == "random" else 0.8)  # random pruning is the weak baseline


def test_nm_keeps_two_of_four(digits):
    ctx = recipes.run(
        _recipe({"kind": "prune", "method": "nm", "n": 2, "m": 4, "finetune_epochs": 1}), _context(digits)
    )
    k = np.asarray(ctx.params["params"]["layers"][0]["kernel"])  # (in, out): groups of 4 along the input axis
    groups = (k.reshape(16, 4, k.shape[1]) != 0).sum(axis=1)
    assert (groups <= 2).all() and groups.mean() > 1.9


def test_nm_skip_leaves_layers_m_does_not_divide_dense(digits):
    step = {"kind": "prune", "method": "nm", "n": 32, "m": 64, "incompatible": "skip", "finetune_epochs": 0}
    with pytest.warns(UserWarning, match=r"\['layers'\]\[2\]\['kernel'\] \(axis -2 has length 32\)"):
        ctx = recipes.run(_recipe(step), _context(digits))
    assert _kernel_sparsity(ctx.params)[:2] == [0.5, 0.5]
    assert _kernel_sparsity(ctx.params)[2] == 0.0  # 32 inputs: left dense


def test_iterative_and_polynomial_reach_the_target(digits):
    # movement pruning (scores from -w*g) needs more steps than magnitude to recover on a small net
    cases = (
        ("iterative", "magnitude", 4, 0.85),
        ("polynomial", "magnitude", 4, 0.85),
        ("polynomial", "movement", 6, 0.6),
    )
    for schedule, method, epochs, floor in cases:
        step = {"kind": "prune", "method": method, "sparsity": 0.8, "schedule": schedule, "finetune_epochs": epochs}
        ctx = recipes.run(_recipe(step), _context(digits))
        assert hamjax.prune.sparsity_of(ctx.params["params"]) == pytest.approx(0.8, abs=0.01), (schedule, method)
        assert hamjax.train.evaluate(ctx.apply_fn, ctx.params, digits.test)["accuracy"] > floor, (schedule, method)


def test_structured_shrink_gives_a_smaller_model_with_the_masked_accuracy(digits):
    ctx = recipes.run(
        _recipe({"kind": "prune", "method": "neurons", "sparsity": 0.5, "finetune_epochs": 2, "shrink": True}),
        _context(digits),
    )
    dense, pruned = ctx.stages
    dense_count = hamjax.measure.param_count(dense.params)
    small_count = hamjax.measure.param_count(pruned.params)
    assert small_count < 0.6 * dense_count
    # an MLP shrinks to a narrower MLP: the config goes on, so later steps can prune or distill it again
    assert ctx.config == hamjax.models.MLPConfig(sizes=(64, 32, 16, 10))
    assert hamjax.train.evaluate(ctx.apply_fn, ctx.params, digits.test)["accuracy"] > 0.85


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"method": "nm", "n": 5, "m": 4}, "n=5 must be <= m=4"),
        ({"method": "magnitude", "shrink": True}, "shrink=true needs a structured method"),
        ({"method": "movement"}, "use schedule='polynomial'"),
        ({"method": "saliency", "schedule": "polynomial"}, "prunes during training"),
        ({"method": "neurons", "schedule": "iterative"}, "supports schedule='one_shot' only"),
        ({"method": "nm", "schedule": "iterative"}, "schedule='iterative' supports methods"),
        ({"method": "magnitude", "schedule": "iterative", "finetune_epochs": 0}, "needs finetune_epochs >= 1"),
        ({"method": "magnitude", "sparsity": 1.0}, r"sparsity must be <= 0.999"),
        ({"method": "magnitude", "sparsity": -0.1}, r"sparsity must be >= 0.0"),
        ({"method": "lottery"}, "method must be one of"),
        ({"method": "block", "block_score": "mean", "schedule": "iterative"}, "block_score='mean' applies to"),
        ({"method": "nm", "incompatible": "drop"}, "incompatible must be one of"),
    ],
)
def test_prune_step_validation(step, match):
    with pytest.raises(RecipeError, match=match):
        recipes.validate({"name": "t", "steps": [{"kind": "prune", **step}]})


def test_method_lists_are_the_prune_familys():
    from hamjax.recipes.steps import pruning

    choices = pruning.FIELDS["method"].choices
    assert set(hamjax.prune.SCHEDULED_METHODS) <= set(choices) and set(hamjax.prune.METHODS) <= set(choices)
    assert set(pruning.STRUCTURED) == {"groups"} | {g for gs in hamjax.prune.GRANULARITIES.values() for g in gs}


@pytest.mark.parametrize("method", ["groups", "neurons"])
def test_structured_pruning_shrinks_a_custom_model_through_its_channel_groups(digits, method):
    from reference_models import plain_mlp

    apply_fn, params = plain_mlp()
    step = {"kind": "prune", "method": method, "sparsity": 0.5, "shrink": True, "finetune_epochs": 1}
    ctx = recipes.run(
        recipes.validate({"name": "t", "steps": [step]}), recipes.Context(apply_fn, params, digits, progress=False)
    )
    hidden = [g for g in hamjax.prune.channel_groups(apply_fn, params, digits.train.x[:2]) if g.prunable]
    assert hidden and ctx.config is None
    small = sum(int(np.size(a)) for a in jax.tree.leaves(ctx.params))
    assert small < 0.6 * sum(int(np.size(a)) for a in jax.tree.leaves(params))
    assert "channel groups 50%" in ctx.stages[-1].notes and "shrunk physically" in ctx.stages[-1].notes
    dense = hamjax.train.evaluate(apply_fn, ctx.stages[0].params, digits.test)["accuracy"]
    assert hamjax.train.evaluate(ctx.apply_fn, ctx.params, digits.test)["accuracy"] > dense - 0.05


def test_groups_fields_apply_to_method_groups_only():
    with pytest.raises(RecipeError, match="importance, scope and multiple apply to method='groups'"):
        recipes.validate({"name": "t", "steps": [{"kind": "prune", "method": "magnitude", "scope": "global"}]})


@pytest.mark.parametrize("method", ["global_magnitude", "nm"])
def test_unstructured_methods_prune_weights_found_by_use_not_an_added_pos_table(digits, method):
    apply_fn, params = row_token_model()
    recipe = recipes.validate({"name": "t", "steps": [{"kind": "prune", "method": method, "finetune_epochs": 0}]})
    ctx = recipes.run(recipe, recipes.Context(apply_fn, params, digits, progress=False))
    np.testing.assert_array_equal(ctx.params["pos"], params["pos"])  # by name, pos (8, 16) was a kernel
    weights = np.concatenate([np.ravel(ctx.params[name]) for name in ("proj", "head")])
    assert np.mean(weights == 0) == pytest.approx(0.5, abs=0.01)  # global: over both; nm: 2 of 4 in each
