"""autotune.run: optimize_auto end to end, its result, the knowledge base, constraints nobody meets, bad input.

The default tests replace :meth:`Evaluator.run` by a table of synthetic
numbers (no training, no export), so the whole loop (strategies, screenings,
full evaluations, the log, learning and judging suggestions) runs in seconds.
The slow test runs the real thing once on a tiny trained plain-jnp model.
"""

import sqlite3
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import recipes, train
from hamjax.autotune import KnowledgeBase, KnowledgeBaseError, evaluate, objective, optimize_auto, run
from hamjax.data import Split

BASE = objective.Measured(accuracy=0.90, latency_ms=1.0, size_bytes=10_000, params=1283)
LIMITS = {"max_accuracy_drop": 1.0, "min_size_reduction": 3.0}


def _apply(p, x):
    h = jax.nn.relu(x @ p["w1"] + p["b1"][None])  # explicit [None]: the suite raises on rank promotion
    return h @ p["w2"] + p["b2"][None]


def _tiny(seed=0):
    """A plain-jnp MLP 16 -> 64 -> 3 and three separable blobs (600 samples, 180 for validation)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 16)) * 1.5
    y = rng.integers(0, 3, size=600).astype(np.int32)
    x = (centers[y] + rng.normal(size=(600, 16))).astype(np.float32)
    ds = hamjax.data.from_arrays(x, y, seed=seed, val_fraction=0.3)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (16, 64)) / 4.0,
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 3)) / 8.0,
        "b2": jnp.zeros(3),
    }
    return params, ds


def _synthetic(recipe, fidelity):
    """Numbers a recipe would give: int8 stores 0.3x, pruning costs 4 points per unit of sparsity."""
    if recipe.name == "baseline":
        return BASE
    size, drop = float(BASE.size_bytes), 0.5 if fidelity == "cheap" else 0.0
    for step in recipe.steps:
        if step.kind == "quantize":
            size, drop = size * 0.3, drop + 0.2
        elif step.kind == "prune":
            sparsity = step.params.get("sparsity", 0.5)
            size, drop = size * (1.0 - sparsity), drop + 4.0 * sparsity
        elif step.kind not in ("export", "precision"):
            size, drop = size * 0.8, drop + 0.3
    latency = None if fidelity == "cheap" else size / BASE.size_bytes
    return objective.Measured(BASE.accuracy - drop / 100.0, latency, int(size), 1000)


@pytest.fixture
def fake(monkeypatch):
    """Evaluator.run replaced by :func:`_synthetic`; the calls are listed."""
    calls = []

    def fake_run(self, recipe, fidelity="full", *, name=None, reuse=True):
        calls.append((recipe.name, fidelity))
        context = types.SimpleNamespace(
            apply_fn=_apply,
            params={"fake": fidelity},
            stages=[],
            extras={"onnx int8": types.SimpleNamespace(path="m.onnx")},
        )
        return evaluate.Outcome(_synthetic(recipe, fidelity), context, None, "onnx int8", 0.0)

    monkeypatch.setattr(evaluate.Evaluator, "run", fake_run)
    return calls


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


def _auto(tiny, **kw):
    params, ds = tiny
    return optimize_auto(_apply, params, ds, **{"constraints": LIMITS, "budget": 3, "strategy": "hybrid", **kw})


def test_the_loop_chooses_a_feasible_recipe_explains_it_and_the_knowledge_base_learns(fake, tiny, tmp_path):
    base = KnowledgeBase(f"sqlite:///{tmp_path / 'kb.db'}")
    echoed = []
    result = _auto(tiny, knowledge=base, echo=echoed.append)
    assert isinstance(result, run.AutoResult) and result.feasible and not result.unmet
    assert isinstance(result.recipe, recipes.Recipe) and result.recipe.steps[-1].kind == "export"
    assert objective.violations(result.measured, result.baseline, objective.Constraints(**LIMITS)) == ()
    assert result.baseline == BASE and result.signature.family == "mlp"
    full = [e for e in result.history if e.fidelity == "full"]
    assert 1 <= len(full) <= 3 and len(result.history) == len(fake) - 1  # the baseline is not a candidate
    assert result.measured == max((e for e in full if not e.violations), key=lambda e: e.score).measured
    assert result.apply_fn is _apply and result.paths == {"onnx int8": "m.onnx"}
    # the log: the model, the baseline, one line per candidate with its reason, the choice
    assert echoed == result.log
    assert result.log[0].startswith("model: family mlp") and result.log[1].startswith("baseline: accuracy 0.9000")
    steps = [line for line in result.log if line.startswith("[")]
    assert len(steps) >= len(full) and all(" proposes " in s and ": " in s.split(" proposes ")[1] for s in steps)
    assert result.log[-1].startswith("chosen ") and "the best score" in result.log[-1]
    assert result.knowledge["added"] == len(full) and result.knowledge["suggested"] == 0
    assert len(base.records()) == len(full)
    # a second run on the same base starts from its suggestions and judges them
    again = _auto(tiny, knowledge=base)
    assert again.knowledge["suggested"] > 0 and again.knowledge["judged"] >= 1
    assert any(line.startswith("knowledge base suggests") for line in again.log)
    assert any("knowledge:" in line for line in again.log if line.startswith("["))
    assert len(base.records()) == len(full) + again.knowledge["added"]


@pytest.mark.parametrize("strategy", ["ensemble"])
def test_other_strategies_run_the_same_loop(fake, tiny, strategy):
    result = _auto(tiny, strategy=strategy, budget=2, seed=1, selection_method="rank")
    assert sum(e.fidelity == "full" for e in result.history) <= 2
    assert result.knowledge == {"suggested": 0, "added": 0, "judged": 0, "proved_wrong": 0, "warnings": []}


def test_constraints_nobody_meets_give_no_recipe_and_name_the_constraint(fake, tiny):
    result = _auto(tiny, constraints={"max_accuracy_drop": 1.0, "min_size_reduction": 1000.0}, budget=2, screenings=1)
    # the size limit puts the cutting rules first: their drops break the accuracy limit as well
    assert not result.feasible and result.recipe is None and "min_size_reduction" in result.unmet
    assert result.apply_fn is None and result.params is None and result.measured is None and result.paths == {}
    assert result.context is None and result.quantized is None
    assert sum(e.fidelity == "full" for e in result.history) == 2
    assert result.log[-1].startswith("no feasible recipe in 2 full evaluations; never met: ")
    assert result.log[-1].endswith(", ".join(result.unmet)) and "min_size_reduction" in result.log[-1]


def test_the_seconds_budget_stops_proposing(fake, tiny):
    result = _auto(tiny, seconds=1e-9)
    assert result.history == [] or len(result.history) <= 1


def test_a_corrupt_knowledge_base_falls_back_to_read_only_and_says_so(fake, tiny, tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database" * 100)
    result = _auto(tiny, knowledge=f"sqlite:///{corrupt}")
    assert result.feasible and result.knowledge["added"] == 0 and result.knowledge["warnings"]
    assert any(line.startswith("knowledge base: ") and "read-only" in line for line in result.log)
    assert corrupt.read_bytes() == b"not a database" * 100


def _newer(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    KnowledgeBase(url).close()
    with sqlite3.connect(tmp_path / "newer.db") as conn:
        conn.execute("UPDATE hamjax_knowledge_schema SET version = 99")
    return url


def test_a_knowledge_base_of_a_newer_schema_is_refused_or_read_without_writing(fake, tiny, tmp_path):
    url = _newer(tmp_path)
    with pytest.raises(KnowledgeBaseError, match="schema version 99"):
        KnowledgeBase(url)
    result = _auto(tiny, knowledge=url, budget=1)  # a URL: the run goes on without the base, and says why
    assert result.knowledge["added"] == 0
    assert any("schema version 99" in line and line.startswith("knowledge base: ") for line in result.log)


@pytest.mark.parametrize(
    ("kw", "phrase"),
    [
        ({"budget": 0}, "optimize_auto: budget must be an integer >= 1, got 0"),
        ({"weights": {"speed": -1.0}}, "Weights: speed must be a finite number >= 0, got -1.0"),
        ({"weights": {"speed": 0, "memory": 0, "accuracy": 0}}, "must not all be zero"),
        ({"strategy": "greedy"}, "optimize_auto: strategy must be one of"),
        ({"seconds": 0}, "optimize_auto: seconds must be"),
        ({"seconds": -5.0}, "optimize_auto: seconds must be"),
        ({"constraints": {"max_accuracy_drop": -1.0}}, "Constraints: max_accuracy_drop"),
        ({"no_val": True}, "dataset must have a validation split"),
    ],
)
def test_bad_input_is_refused_before_any_work(fake, tiny, kw, phrase):
    params, ds = tiny
    if kw.pop("no_val", False):
        ds = ds._replace(val=Split(ds.val.x[:0], ds.val.y[:0]))
    with pytest.raises(ValueError) as info:
        optimize_auto(_apply, params, ds, **kw)
    assert phrase in str(info.value) and "\n" not in str(info.value)
    assert fake == []


@pytest.fixture(scope="module")
def trained(tiny):
    params, ds = tiny
    fitted = train.fit(
        _apply, params, ds, train.TrainConfig(epochs=3, batch_size=64, learning_rate=1e-2), progress=False
    )
    return fitted.params, ds


@pytest.mark.slow
def test_a_real_run_on_a_tiny_trained_model(trained, tmp_path):
    base = KnowledgeBase(f"sqlite:///{tmp_path / 'kb.db'}")
    limits = {"max_accuracy_drop": 1.0, "min_size_reduction": 1.3}  # int8 alone is ~1.45x on a file this small
    result = _auto(trained, constraints=limits, budget=2, screenings=2, knowledge=base, folder=tmp_path / "c")
    full = [e for e in result.history if e.fidelity == "full"]
    assert result.feasible and 1 <= len(full) <= 2
    assert objective.violations(result.measured, result.baseline, objective.Constraints(**limits)) == ()
    assert result.baseline.latency_ms is not None and result.measured.latency_ms is not None
    assert result.paths and all(Path(p).suffix == ".onnx" and Path(p).exists() for p in result.paths.values())
    assert all(tmp_path / "c" in Path(p).parents for p in result.paths.values())
    x = trained[1].val.x[:4]
    assert result.apply_fn(result.params, x).shape == (4, 3)
    assert len(base.records()) == result.knowledge["added"] == len(full)
    again = _auto(trained, constraints=limits, budget=1, screenings=0, knowledge=base)
    assert again.knowledge["suggested"] > 0 and again.knowledge["judged"] == 1


def test_the_layers_int8_hurts_most_may_be_kept_in_float():
    names = ("['w1']", "['w2']")
    found = types.SimpleNamespace(names=names, drops=np.array([[0.1, 0.2], [0.5, 3.0]]), ranking=names[::-1])
    params, ds = _tiny()
    assert run.sensitive_sites(_apply, params, ds, found) == ("['w2']",)  # w1 loses 0.15 pt: below SKIP_MIN_DROP
    found.drops = np.array([[0.3, 0.4], [0.5, 3.0]])
    assert run.sensitive_sites(_apply, params, ds, found) == ("['w2']", "['w1']")
    assert run.sensitive_sites(_apply, params, ds, None) == ()
