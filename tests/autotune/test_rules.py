import numpy as np
import pytest

from hamjax.autotune import rules
from hamjax.autotune.objective import Constraints
from hamjax.autotune.space import FAMILIES, RecipeSpace

EXPORT = {"kind": "export", "precisions": "int8", "tensorrt": False}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("export", ["int8", "fp32", "auto"])
def test_every_family_has_rules_that_fit_its_space(family, export):
    for reference in (False, True):
        space = RecipeSpace(family, reference=reference, export=export)
        found = rules.suggestions(space)
        assert found, (family, export, reference)
        keys = [space.key(s.recipe) for s in found]
        assert len(keys) == len(set(keys))
        for s in found:
            assert space.contains(s.recipe) and s.reason and s.weight > 0 and s.source == "rules"


def test_table_is_data_with_reasons():
    assert set(rules.RULES) == set(FAMILIES)
    for family_rules in rules.RULES.values():
        for rule in family_rules:
            assert set(rule) == {"decisions", "weight", "reason"} and 0 < rule["weight"] <= 1 and rule["reason"]


def test_first_rules_per_family():
    mlp = rules.suggestions(RecipeSpace("mlp"))[0].recipe
    prune, quantize = mlp.steps[0].params, mlp.steps[1].params
    assert (prune["method"], prune["sparsity"], prune["shrink"], quantize["method"]) == ("groups", 0.5, True, "static")
    cnn = rules.suggestions(RecipeSpace("cnn"))[0].recipe
    assert [s.kind for s in cnn.steps] == ["fold", "prune", "quantize", "export"]
    vit = rules.suggestions(RecipeSpace("vit", reference=True))[0].recipe
    assert [s.kind for s in vit.steps] == ["merge", "fuse", "quantize", "export"]
    assert vit.steps[2].params["method"] == "dynamic"
    # a custom ViT has no marked blocks: the merge rule is left out, not turned into something else
    assert all("ToMe" not in s.reason for s in rules.suggestions(RecipeSpace("vit")))


def test_knowledge_comes_first_by_weight_taking_turns_with_the_rules_and_bad_entries_are_skipped():
    low = {"name": "a", "steps": [{"kind": "quantize", "method": "weight_only"}, EXPORT]}
    high = {"name": "b", "steps": [{"kind": "prune", "method": "groups", "sparsity": 0.8, "shrink": True}, EXPORT]}
    broken = {"name": "c", "steps": [{"kind": "prune", "sparsity": 2.0}]}
    found = rules.suggestions(RecipeSpace("mlp"), [(low, 0.2, "low"), (broken, 5.0, "bad"), (high, 0.9, "high")])
    assert [s.source for s in found[:4]] == ["knowledge", "rules", "knowledge", "rules"]
    assert found[0].reason.startswith("knowledge base: high") and "projected" in found[0].reason  # no quantize
    assert found[0].recipe.steps[0].params["sparsity"] == 0.8
    assert found[1].reason == rules.suggestions(RecipeSpace("mlp"))[0].reason
    assert found[2].reason == "knowledge base: low"
    assert all("bad" not in s.reason for s in found)


def test_priors_follow_the_rules():
    space = RecipeSpace("cnn")
    priors = rules.priors_for(space)
    first = space.next_decision(())
    assert first.name == "steps.fold"
    assert priors.probabilities((), first)[first.choices.index(True)] > 0.8
    taken = (("steps.fold", True), ("steps.prune", True), ("steps.lowrank", False), ("steps.quantize", True))
    method = space.next_decision(taken)
    probs = priors.probabilities(taken, method)
    assert probs[method.choices.index("groups")] == probs.max()
    assert np.all(probs > 0)
    sparsity = space.next_decision((*taken, ("prune.method", "groups")))
    assert {v for v, _ in priors.centres((*taken, ("prune.method", "groups")), sparsity)} == {0.3, 0.5, 0.7}
    assert not rules.Priors([])


def test_rules_survive_a_space_with_other_finetune_epochs():
    found = rules.suggestions(RecipeSpace("mlp", finetune=(1,)))
    assert len(found) == len(rules.suggestions(RecipeSpace("mlp")))
    assert found[0].recipe.steps[0].params["finetune_epochs"] == 1


def test_a_size_limit_puts_the_rules_that_cut_parameters_first():
    space = RecipeSpace("transformer")
    plain = rules.suggestions(space)
    sized = rules.suggestions(space, constraints=Constraints(min_size_reduction=4.0))
    timed = rules.suggestions(space, constraints=Constraints(max_latency_ms=1.0))
    assert [s.reason for s in timed] == [s.reason for s in plain]
    assert sorted(s.reason for s in sized) == sorted(s.reason for s in plain)
    cut = [rules.shrinks(dict(space.fields(s.recipe))) for s in sized]
    assert cut == sorted(cut, reverse=True) and cut[0] and not cut[-1]
    first = sized[0].recipe.steps[0].params  # a quarter of the groups, finetuned long at the faster rate
    assert (first["sparsity"], first["finetune_epochs"], first["learning_rate"]) == (0.25, 60, 2e-3)
    assert not rules.shrinks({"steps.prune": True, "prune.method": "magnitude"})
