import numpy as np
import pytest

from hamjax import recipes
from hamjax.autotune import space as space_mod
from hamjax.autotune.signature import Signature
from hamjax.autotune.space import FAMILIES, RecipeSpace


def _signature(family, norm=0):
    return Signature(family, (), 1000, (8, 8, 1), "image", 10, 3, dense=2, norm=norm)


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_validate_and_keys_are_canonical(family):
    space = RecipeSpace(_signature(family, norm=2), reference=True, export="auto", distill=True, precision=True)
    rng = np.random.default_rng(0)
    by_key = {}
    for _ in range(200):
        recipe = space.sample(rng)
        again = recipes.validate(recipe.to_dict())
        assert space.key(again) == space.key(recipe)
        assert recipe.steps[-1].kind == "export"
        assert "train" not in [s.kind for s in recipe.steps]
        assert len(recipe.steps) >= 2  # never the dense model alone
        quantized = any(s.kind == "quantize" for s in recipe.steps)
        assert recipe.steps[-1].params["precisions"] == ("int8" if quantized else "fp32")
        as_dict = recipe.to_dict()["steps"]
        assert by_key.setdefault(space.key(recipe), as_dict) == as_dict  # one key, one recipe
        assert space.key(space.build(space.fields(recipe))) == space.key(recipe)
    assert len(by_key) > 150


def test_family_table_and_conditions():
    assert RecipeSpace(_signature("cnn", norm=0)).kinds == ("prune", "lowrank", "quantize")
    assert RecipeSpace(_signature("cnn", norm=3)).kinds == ("fold", "prune", "lowrank", "quantize")
    assert "merge" not in RecipeSpace("vit").kinds and "merge" in RecipeSpace("vit", reference=True).kinds
    assert RecipeSpace("mlp", reference=True).prune_methods == ("groups", "magnitude", "neurons")
    assert RecipeSpace("transformer", export="fp32").kinds == ("prune", "lowrank", "fuse")
    assert RecipeSpace("transformer", export="fp32", precision=True).kinds[-1] == "precision"
    assert "precision" not in RecipeSpace("mlp", export="int8", precision=True).kinds
    assert RecipeSpace("mlp", steps=("prune", "quantize")).kinds == ("prune", "quantize")


def test_export_int8_always_quantizes_and_fp32_never():
    rng = np.random.default_rng(3)
    for _ in range(30):
        kinds = [s.kind for s in RecipeSpace("mlp", export="int8").sample(rng).steps]
        assert "quantize" in kinds and "precision" not in kinds
        assert "quantize" not in [s.kind for s in RecipeSpace("mlp", export="fp32").sample(rng).steps]


def test_structured_prune_shrinks_and_reference_needs_nothing_more():
    space = RecipeSpace("mlp", steps=("prune", "quantize"))
    recipe = space.build(space.complete({"steps.prune": True, "prune.method": "groups", "prune.sparsity": 0.6}))
    prune = recipe.steps[0].params
    assert (prune["method"], prune["shrink"], prune["sparsity"]) == ("groups", True, 0.6)
    assert recipes.reference_steps(recipe) == []


def test_decision_walk_and_continuous_grid():
    space = RecipeSpace("mlp", steps=("prune", "quantize"))
    taken = space.complete({"steps.prune": True, "prune.sparsity": 0.7349})
    assert dict(taken)["prune.sparsity"] == 0.73
    assert space.next_decision(taken) is None
    assert space.next_decision(()).name == "steps.prune"
    sparsity = space.next_decision((("steps.prune", True), ("steps.quantize", True), ("prune.method", "groups")))
    assert sparsity.continuous and (sparsity.low, sparsity.high) == (0.1, 0.9)
    assert not sparsity.accepts(0.7349) and sparsity.accepts(0.73)


def test_fields_refuses_recipes_outside_the_space():
    space = RecipeSpace("mlp", steps=("prune", "quantize"))
    outside = recipes.validate({"name": "x", "steps": [{"kind": "lowrank", "energy": 0.9}, {"kind": "export"}]})
    with pytest.raises(ValueError, match="not in this space"):
        space.fields(outside)
    assert not space.contains(outside)
    with pytest.raises(ValueError, match="is not allowed here"):
        space.build((("steps.prune", True), ("prune.method", "nm")))


def test_key_ignores_name_and_defaults():
    a = recipes.validate({"name": "a", "steps": [{"kind": "quantize"}, {"kind": "export"}]})
    b = recipes.validate({"name": "b", "steps": [{"kind": "quantize", "method": "static"}, {"kind": "export"}]})
    assert space_mod.key(a) == space_mod.key(b)


def test_merge_r_is_bounded_by_the_tokens():
    sig = Signature("vit", (), 1000, (8, 8, 1), "image", 10, 3, dense=8, attention=2)
    assert RecipeSpace(sig, reference=True).merge_choices == (1,)
    assert RecipeSpace(sig, reference=True, tokens=16).merge_choices == (1, 2, 4)
    assert RecipeSpace(sig, reference=True, tokens=49).merge_choices == (1, 2, 4, 8, 16)
    with pytest.raises(ValueError, match="RecipeSpace: tokens must be an integer >= 2, got 0"):
        RecipeSpace(sig, tokens=0)


def test_merge_never_follows_lowrank_or_a_group_shrink():
    space = RecipeSpace("vit", reference=True)
    rng = np.random.default_rng(0)
    for _ in range(200):
        steps = {s.kind: s.params for s in space.sample(rng).steps}
        if "merge" in steps:
            assert "lowrank" not in steps
            assert steps.get("prune", {}).get("method") != "groups"


def test_sensitive_sites_may_be_kept_in_float():
    space = RecipeSpace("mlp", steps=("quantize",), sensitive=("['w2']", "['w1']"))
    names = [d.name for d in _walk(space)]
    assert "quantize.skip" in names
    recipe = space.build(space.complete({"quantize.skip": "['w2'],['w1']"}))
    assert recipe.steps[0].params["skip"] == "['w2'],['w1']" and space.contains(recipe)
    assert space.build(space.complete({})).steps[0].params["skip"] == ""  # the default keeps every site int8
    assert "quantize.skip" not in [d.name for d in _walk(RecipeSpace("mlp", steps=("quantize",)))]
    with pytest.raises(ValueError, match="sensitive must be a sequence of site names"):
        RecipeSpace("mlp", sensitive="['w1']")


def _walk(space):
    taken, out = [], []
    while (decision := space.next_decision(taken)) is not None:
        out.append(decision)
        taken.append((decision.name, decision.default))
    return out
