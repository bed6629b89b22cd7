import numpy as np
import pytest

from hamjax import recipes
from hamjax.autotune import objective, strategies
from hamjax.autotune.decision import storage_key
from hamjax.autotune.space import RecipeSpace

BASE = objective.Measured(accuracy=0.95, latency_ms=2.0, size_bytes=40000, params=10000)
CONSTRAINTS = objective.Constraints(max_accuracy_drop=1.0, min_size_reduction=4.0)
WEIGHTS = objective.Weights()
EXPORT = {"kind": "export", "precisions": "int8", "tensorrt": False}


def measure(recipe) -> objective.Measured:
    """A synthetic compression model: each step shrinks size and latency and costs accuracy (no training)."""
    size, latency, drop = 1.0, 1.0, 0.0
    for step in recipe.steps:
        p = step.params
        if step.kind == "prune":
            s, tune = p["sparsity"], 0.6 if p["finetune_epochs"] >= 3 else 1.0
            if p["method"] == "magnitude":
                drop += 3 * s**3 * tune  # masked: same dense size and speed
            else:
                size, latency, drop = size * (1 - s), latency * (0.1 + 0.9 * (1 - s)), drop + 8 * s**3 * tune
        elif step.kind == "lowrank":
            e, tune = p["energy"], 0.6 if p["finetune_epochs"] >= 3 else 1.0
            size, latency = size * (0.2 + 0.8 * e**4), latency * (0.4 + 0.6 * e**4)
            drop += 30 * (1 - e) ** 2 * tune
        elif step.kind == "quantize":
            size /= 4
            latency *= {"static": 0.35, "dynamic": 0.6, "weight_only": 0.9}[p["method"]]
            drop += {"static": 0.3, "dynamic": 0.2, "weight_only": 0.1}[p["method"]]
    return objective.Measured(BASE.accuracy - drop / 100, BASE.latency_ms * latency, int(BASE.size_bytes * size), 1)


def evaluate(recipe, source) -> strategies.Evaluation:
    m = measure(recipe)
    found = objective.violations(m, BASE, CONSTRAINTS)
    return strategies.Evaluation(recipe, m, objective.score(m, BASE, WEIGHTS), found, "full", 0.0, source)


def run(name, seed, budget, space=None, priors=None):
    strategy = strategies.make(name, space or RecipeSpace("mlp"), None, CONSTRAINTS, WEIGHTS, seed=seed, priors=priors)
    history, reasons = strategies.History(), []
    for _ in range(budget):
        recipe = strategy.propose(history)
        reasons.append(strategy.last_reason)
        evaluation = evaluate(recipe, name)
        history.append(evaluation)
        strategy.observe(evaluation)
    return history, reasons


@pytest.mark.parametrize("name", strategies.NAMES)
def test_each_strategy_proposes_new_valid_recipes_with_reasons(name):
    history, reasons = run(name, 0, 12)
    keys = [strategies.space_mod.key(e.recipe) for e in history]
    assert len(set(keys)) == 12
    for e, reason in zip(history, reasons, strict=True):
        assert recipes.validate(e.recipe.to_dict()) == e.recipe
        assert RecipeSpace("mlp").contains(e.recipe)
        assert reason and reason.split(":")[0].split(" ")[0] in ("rules", "knowledge", "tree", "random", "optuna")


@pytest.mark.parametrize("name", ["mcts", "hybrid", "random", "optuna"])
def test_deterministic_given_a_seed(name):
    a = [strategies.space_mod.key(e.recipe) for e in run(name, 5, 8)[0]]
    b = [strategies.space_mod.key(e.recipe) for e in run(name, 5, 8)[0]]
    assert a == b


def _best(history) -> float:
    best = history.best()
    return best.score if best is not None else -np.inf


def test_hybrid_beats_random_and_optuna_at_equal_budget_on_most_seeds():
    seeds, budget = range(8), 8
    hybrid = [_best(run("hybrid", s, budget)[0]) for s in seeds]
    for baseline in ("random", "optuna"):
        other = [_best(run(baseline, s, budget)[0]) for s in seeds]
        wins = sum(h > o for h, o in zip(hybrid, other, strict=True))
        assert wins >= 6, (baseline, hybrid, other)


def test_rules_then_refinement_then_exhausted():
    space = RecipeSpace("mlp", steps=("quantize",))  # three recipes: the quantize methods
    strategy = strategies.make("rules", space, None, CONSTRAINTS, WEIGHTS, seed=0)
    history = strategies.History()
    for _ in range(3):
        history.append(evaluate(strategy.propose(history), "rules"))
    assert "neighbour" in strategy.last_reason
    with pytest.raises(strategies.Exhausted, match="rules"):
        strategy.propose(history)
    for name in ("random", "mcts", "hybrid"):
        with pytest.raises(strategies.Exhausted):
            strategies.make(name, space, None, CONSTRAINTS, WEIGHTS, seed=0).propose(history)


def test_knowledge_priors_come_first_in_rules_and_hybrid():
    raw = {"name": "kb", "steps": [{"kind": "prune", "method": "groups", "sparsity": 0.45, "shrink": True}, EXPORT]}
    for name in ("rules", "hybrid"):
        history, reasons = run(name, 0, 2, priors=[(raw, 0.9, "feasible on 3 similar models")])
        assert reasons[0].startswith("knowledge: knowledge base: feasible on 3 similar models")
        assert history[0].recipe.steps[0].params["sparsity"] == 0.45
        assert reasons[1].startswith("rules: ")


def test_hybrid_moves_to_the_tree_when_rules_stop_improving():
    _, reasons = run("hybrid", 0, 10)
    assert reasons[0].startswith("rules")
    assert any(r.startswith("tree search (PUCT") for r in reasons)


def test_ensemble_shares_the_history():
    space = RecipeSpace("mlp")
    made = {n: strategies.make(n, space, None, CONSTRAINTS, WEIGHTS, seed=0) for n in ("optuna", "mcts", "random")}
    history = strategies.History()
    for i in range(9):
        name = list(made)[i % 3]
        evaluation = evaluate(made[name].propose(history), name)
        history.append(evaluation)
        for strategy in made.values():
            strategy.observe(evaluation)
    trials = made["optuna"].study.trials
    assert sum(t.user_attrs.get("source") in ("mcts", "random") for t in trials) == 6  # added from the others
    assert sum(t.value is not None for t in trials) >= 9
    assert made["mcts"].search.root.visits == 9
    assert len(history.keys()) == 9


def test_history_best():
    feasible = evaluate(recipes.validate({"name": "a", "steps": [{"kind": "quantize"}, EXPORT]}), "x")
    broken = strategies.Evaluation(feasible.recipe, feasible.measured, 2.0, ("max_size_bytes: x",), "full", 0.0, "x")
    history = strategies.History([broken, feasible])
    assert history.best() is feasible
    assert history.best(feasible_only=False) is feasible  # the penalty outweighs the higher score
    assert history.best(fidelity="cheap") is None
    assert feasible.recipe in history and len(history) == 2 and history[0] is broken


def test_make_refuses():
    with pytest.raises(ValueError, match="strategies.make: name must be one of"):
        strategies.make("greedy", RecipeSpace("mlp"), None, CONSTRAINTS, WEIGHTS, seed=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        strategies.make("random", RecipeSpace("mlp"), None, CONSTRAINTS, WEIGHTS, seed=-1)


def test_optuna_follows_choices_that_depend_on_earlier_decisions():
    # A reference ViT's space prunes by other methods when it merges tokens: one decision name, two choice sets,
    # which Optuna refuses under one parameter name.
    space = RecipeSpace("vit", reference=True, tokens=16)
    made = {n: strategies.make(n, space, None, CONSTRAINTS, WEIGHTS, seed=0) for n in ("optuna", "random")}
    history = strategies.History()
    for i in range(60):
        name = ("optuna", "random")[i % 2]
        evaluation = evaluate(made[name].propose(history), name)
        history.append(evaluation)
        for strategy in made.values():
            strategy.observe(evaluation)
    assert len(history.keys()) == 60
    assert any(s.kind == "merge" for e in history for s in e.recipe.steps)


def test_refinement_follows_what_the_best_evaluation_lacks():
    space = RecipeSpace("mlp", steps=("prune", "quantize"))
    strategy = strategies.make("rules", space, None, CONSTRAINTS, WEIGHTS, seed=0)
    raw = {"steps.prune": True, "prune.method": "groups", "prune.sparsity": 0.5, "prune.finetune_epochs": 3}
    recipe = space.build(space.complete(raw))
    m = measure(recipe)
    short = strategies.Evaluation(recipe, m, 0.0, ("max_accuracy_drop: dropped 3 points > 1 allowed",), "full", 0, "x")
    changes = [change for _, change in strategy._neighbours(short)]
    assert changes[:4] == [
        "prune.finetune_epochs 3 -> 10",
        "prune.finetune_epochs 3 -> 30",
        "prune.finetune_epochs 3 -> 60",
        "prune.sparsity 0.5 -> 0.42",
    ]
    feasible = strategies.Evaluation(recipe, m, 0.5, (), "full", 0, "x")
    bold, small = [change for _, change in strategy._neighbours(feasible)][:2]
    assert (bold, small) == ("prune.sparsity 0.5 -> 0.7", "prune.sparsity 0.5 -> 0.58")
    small = strategies.Evaluation(recipe, m, 0.0, ("min_size_reduction: 3x smaller < 4x",), "full", 0, "x")
    assert next(change for _, change in strategy._neighbours(small)) == "prune.sparsity 0.5 -> 0.58"


def test_the_tree_passes_over_recipes_stored_like_one_that_broke_a_size_limit():
    space = RecipeSpace("mlp", steps=("prune", "quantize"))
    history = strategies.History()
    for method in ("static",):  # int8 alone: 4x exactly, and a size limit of 5x
        recipe = space.build(space.complete({"steps.prune": False, "quantize.method": method}))
        m = measure(recipe)
        history.append(strategies.Evaluation(recipe, m, 0.1, ("min_size_reduction: 4x smaller < 5x",), "full", 0, "x"))
    for name in ("mcts", "hybrid"):
        strategy = strategies.make(name, space, None, CONSTRAINTS, WEIGHTS, seed=0)
        for e in history:
            strategy.observe(e)
        proposed = [strategy.propose(history) for _ in range(6)]
        for recipe in proposed:
            history_like = [e for e in history if storage_key(e.recipe) == storage_key(recipe)]
            assert not history_like, (
                name,
                [s.kind for s in recipe.steps],
            )  # dynamic or weight-only int8 alone: skipped
