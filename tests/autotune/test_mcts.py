import math

import numpy as np
import pytest

from hamjax import recipes
from hamjax.autotune import rules
from hamjax.autotune.mcts import MCTS
from hamjax.autotune.space import RecipeSpace

OPTIMUM = 0.95


def value(recipe) -> float:
    """A known function of the recipe's fields, best (0.95) at groups, sparsity 0.62, 3 epochs, no lowrank, static."""
    steps = {s.kind: s.params for s in recipe.steps}
    v = 0.0
    if "prune" in steps:
        p = steps["prune"]
        v += 0.4 + (0.3 if p["method"] == "groups" else 0.0) - 3.0 * (p["sparsity"] - 0.62) ** 2
        v += 0.05 if p["finetune_epochs"] == 3 else 0.0
    if "lowrank" in steps:
        v -= 0.2 + 2.0 * (steps["lowrank"]["energy"] - 0.8) ** 2
    return v + {"static": 0.2, "dynamic": 0.1, "weight_only": 0.0}[steps["quantize"]["method"]]


def proposals_to_optimum(propose, budget=60, tolerance=0.05) -> int:
    """How many distinct proposals until one scores within ``tolerance`` of the optimum (budget + 1 if never)."""
    seen: set[str] = set()
    for i in range(budget):
        recipe, learn = propose(seen)
        seen.add(recipes_key(recipe))
        v = value(recipe)
        learn(recipe, v)
        if v >= OPTIMUM - tolerance:
            return i + 1
    return budget + 1


def recipes_key(recipe):
    from hamjax.autotune import space

    return space.key(recipe)


def mcts_run(seed, priors=None):
    search = MCTS(RecipeSpace("mlp"), priors, seed=seed)
    return proposals_to_optimum(lambda seen: (search.propose(seen)[0], search.observe))


def random_run(seed):
    space, rng = RecipeSpace("mlp"), np.random.default_rng(seed)

    def propose(seen):
        while True:
            recipe = space.sample(rng)
            if recipes_key(recipe) not in seen:
                return recipe, lambda r, v: None

    return proposals_to_optimum(propose)


def test_uct_finds_the_optimum_region_in_fewer_proposals_than_random():
    seeds = range(6)
    tree = [mcts_run(s) for s in seeds]
    uniform = [random_run(s) for s in seeds]
    assert np.mean(tree) < np.mean(uniform), (tree, uniform)
    assert sum(t < u for t, u in zip(tree, uniform, strict=True)) >= 4, (tree, uniform)


def test_puct_with_rules_priors_is_faster_still():
    seeds = range(6)
    guided = [mcts_run(s, rules.priors_for(RecipeSpace("mlp"))) for s in seeds]
    assert np.median(guided) < np.median([mcts_run(s) for s in seeds])


def _sequence(seed, n=12):
    search = MCTS(RecipeSpace("cnn"), seed=seed)
    seen, keys = set(), []
    for _ in range(n):
        recipe, reason = search.propose(seen)
        assert reason.startswith("tree search (UCT")
        keys.append(recipes_key(recipe))
        seen.add(keys[-1])
        search.observe(recipe, value_like(recipe))
    return keys


def value_like(recipe):
    return float(len(recipe.steps)) - sum(s.params.get("sparsity", 0.0) for s in recipe.steps)


def test_deterministic_given_a_seed_and_no_duplicates():
    a, b = _sequence(3), _sequence(3)
    assert a == b and len(set(a)) == len(a)
    assert a != _sequence(4)


def test_progressive_widening_bounds_continuous_children():
    space = RecipeSpace("mlp", steps=("prune", "quantize"))
    search = MCTS(space, seed=0)
    seen = set()
    for _ in range(40):
        found = search.propose(seen)
        if found is None:
            break
        seen.add(recipes_key(found[0]))
        search.observe(found[0], value(found[0]))
    node = search.root
    for name, v in (("steps.prune", True), ("steps.quantize", True), ("prune.method", "groups")):
        assert node.decision.name == name
        node = node.children[v]
    assert node.decision.name == "prune.sparsity"
    assert 2 <= len(node.children) <= math.ceil(search.widen * node.visits**search.alpha) + 1
    assert all(node.decision.accepts(v) for v in node.children)


def test_backpropagation_and_foreign_recipes():
    space = RecipeSpace("mlp", steps=("prune", "quantize"))
    search = MCTS(space, rules.priors_for(space), seed=0)
    recipe = rules.suggestions(space)[0].recipe
    search.observe(recipe, 0.5)
    search.observe(recipe, 1.5)
    node = search.root
    for _, v in space.fields(recipe):
        node = node.children[v]
        assert node.visits == 2 and node.mean == pytest.approx(1.0)
    assert node.decision is None  # a leaf: the full recipe
    outside = recipes.validate({"name": "x", "steps": [{"kind": "lowrank", "energy": 0.9}, {"kind": "export"}]})
    search.observe(outside, 9.0)
    assert search.root.visits == 2 and search.high == 1.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="MCTS: alpha must be a finite number > 0 and < 1, got 1.5"):
        MCTS(RecipeSpace("mlp"), alpha=1.5)
    with pytest.raises(ValueError, match="MCTS.observe: reward must be a finite number"):
        MCTS(RecipeSpace("mlp")).observe(RecipeSpace("mlp").sample(np.random.default_rng(0)), math.nan)
