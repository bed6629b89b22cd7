"""``optimize_auto``: choose, measure and apply the compression recipe for a model under constraints.

The loop: the model's signature and family; suggestions from the knowledge
base for similar signatures; a strategy (rules, MCTS, their hybrid, random,
Optuna, or an ensemble of several chosen by selection over the shared
history) proposes a candidate recipe; a cheap evaluation (finetunes capped)
screens it and only a promising candidate gets a full one, which counts
against ``budget``; every evaluation goes to the history the strategies
learn from and to the decision log. The best feasible full evaluation wins;
none feasible gives no recipe and says which constraints no candidate met.
The run's full evaluations are added to the knowledge base, and each
suggestion the base made is reported right or wrong.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from hamjax import jaxpr, measure
from hamjax._checks import check_choice, check_int, check_positive
from hamjax.autotune import objective, selection, sensitivity, signature, space, strategies
from hamjax.autotune.evaluate import Evaluator
from hamjax.autotune.loop import Loop, describe, results_of, summary

STRATEGIES = ("rules", "mcts", "hybrid", "random", "optuna", "ensemble")
"""What proposes candidates; ``"ensemble"`` runs :data:`ENSEMBLE` and picks one per round by selection."""

ENSEMBLE = ("hybrid", "mcts", "random")
"""The strategies of ``strategy="ensemble"``."""


@dataclasses.dataclass
class AutoResult:
    """What :func:`optimize_auto` returns.

    Attributes:
      recipe: the chosen recipe, or ``None`` when no candidate met the constraints.
      feasible: whether ``recipe`` met every constraint (on full evaluations).
      apply_fn, params: the chosen recipe's optimized float model, or ``None``.
      quantized: ``(qapply, qparams)`` when the chosen recipe quantizes, else ``None``.
      measured: the chosen candidate's :class:`~hamjax.autotune.objective.Measured`, or ``None``.
      baseline: the given model's, measured the same way.
      unmet: the constraints no full evaluation met (empty when one was feasible).
      history: every evaluation, cheap and full, in order.
      log: the decision log: why each candidate was proposed, promoted, rejected or chosen.
      signature: the model's :class:`~hamjax.autotune.signature.Signature`.
      paths: the chosen candidate's exported files by stage name.
      context: the chosen candidate's :class:`hamjax.recipes.Context` (all its stages), or ``None``.
      sensitivity: ``{"quantize": Sensitivity, "prune": Sensitivity}``: each weight layer
        quantized (8 and 4 bits) or pruned (50%) alone, scored in one vmapped call each
        (:func:`~hamjax.autotune.sensitivity.layer_sensitivity`), summarised in the log.
      knowledge: what the knowledge base did: ``"suggested"`` recipes, records ``"added"``, suggestions
        ``"judged"`` by a full evaluation and records that ``"proved_wrong"``, ``"warnings"``.
    """

    recipe: Any
    feasible: bool
    apply_fn: Any
    params: Any
    quantized: Any
    measured: Any
    baseline: Any
    unmet: tuple
    history: Any
    log: list
    signature: Any
    paths: dict
    context: Any
    sensitivity: dict
    knowledge: dict


def _weights(weights) -> objective.Weights:
    if weights is None:
        return objective.Weights()
    if isinstance(weights, objective.Weights):
        return weights
    if isinstance(weights, dict):
        return objective.Weights(**weights)
    raise TypeError(f"optimize_auto: weights must be an objective.Weights or a dict, got {type(weights).__name__}")


def _constraints(constraints) -> objective.Constraints:
    if constraints is None:
        return objective.Constraints()
    if isinstance(constraints, objective.Constraints):
        return constraints
    if isinstance(constraints, dict):
        return objective.Constraints(**constraints)
    raise TypeError(
        f"optimize_auto: constraints must be an objective.Constraints or a dict, got {type(constraints).__name__}"
    )


def _knowledge(knowledge):
    if knowledge is None:
        return None
    from hamjax.autotune import knowledge as kb

    if isinstance(knowledge, kb.KnowledgeBase):
        return knowledge
    if isinstance(knowledge, str):
        return kb.KnowledgeBase.open(None if knowledge == "default" else knowledge, fallback="read_only")
    raise TypeError(f"optimize_auto: knowledge must be a KnowledgeBase, a URL, 'default' or None, got {knowledge!r}")


def _tokens(config) -> int | None:
    """The tokens a reference ViT's first block gets (patches; no class token), else ``None``."""
    patch, shape = getattr(config, "patch_size", None), getattr(config, "input_shape", None)
    if not patch or not shape:
        return None
    return (shape[0] // patch) * (shape[1] // patch)


def _unmet(history, constraints) -> tuple[str, ...]:
    """The constraints (by field name) that every full evaluation violated; empty when one was feasible."""
    full = [e for e in history if e.fidelity == "full" and not any(v.startswith("failed") for v in e.violations)]
    if any(not e.violations for e in full):
        return ()
    names = [f.name for f in dataclasses.fields(constraints) if getattr(constraints, f.name) is not None]
    if not full:
        return tuple(names)
    return tuple(n for n in names if all(any(n in v for v in e.violations) for e in full))


def _learn(base, sig, history, baseline, constraints, source: str, suggested: list) -> dict:
    """Add the run's full evaluations to the knowledge base and judge each suggestion by what it measured."""
    from hamjax.autotune.knowledge import Record, recipe_key

    added, wrong = 0, 0
    suggested_keys = {recipe_key(raw) for raw, _, _ in suggested}
    env = measure.environment()
    judged = set()
    for e in history:
        if e.fidelity != "full" or any(v.startswith("failed") for v in e.violations):
            continue
        results = results_of(e.measured, baseline, constraints, score=e.score, violations=e.violations)
        raw = e.recipe.to_dict()
        base.add(Record(sig.to_dict(), sig.family, raw, results, env, time.time(), source))
        added += 1
        key = recipe_key(raw)
        if key in suggested_keys and key not in judged:
            judged.add(key)
            verdicts = base.report(key, results, signature=sig, constraints=constraints)
            wrong += sum(why is not None for _, why in verdicts)
    return {"added": added, "judged": len(judged), "proved_wrong": wrong}


SENSITIVITY_LEVELS = {"quantize": (8, 4), "prune": (0.5,)}
"""The levels :func:`explain` scores every layer at."""


def explain(apply_fn, params, data, say) -> dict:
    """Score every weight layer's sensitivity on the validation split and say which matter most.

    Returns:
      ``{method: Sensitivity}`` for the methods that could be scored (a model
      with no weight layer the filter finds is said, not raised).
    """
    out = {}
    for method, levels in SENSITIVITY_LEVELS.items():
        try:
            found = sensitivity.layer_sensitivity(
                apply_fn, params, data.val.x, data.val.y, method=method, levels=levels
            )
        except ValueError as err:
            say(f"layer sensitivity ({method}) not scored: {err}")
            continue
        out[method] = found
        mean = dict(zip(found.names, found.drops.mean(axis=1).tolist(), strict=True))
        top = ", ".join(f"{name} {mean[name]:+.2f} pt" for name in found.ranking[:3])
        what = "bits" if method == "quantize" else "sparsity"
        say(
            f"layer sensitivity ({method} one layer at a time at {what} {', '.join(map(str, levels))}; "
            f"{len(found.names)} layers x {len(levels)} levels in one vmapped call): most sensitive {top}; "
            f"least {found.ranking[-1]} {mean[found.ranking[-1]]:+.2f} pt"
        )
    return out


SKIP_MIN_DROP = 0.2
"""Points of accuracy a layer must lose to int8 alone (mean over :data:`SENSITIVITY_LEVELS`) before the search may
keep it in float."""


def sensitive_sites(apply_fn, params, data, found) -> tuple[str, ...]:
    """The (at most two) weight sites int8 hurts most, by ``found`` (a quantize :class:`Sensitivity`), that lose
    at least :data:`SKIP_MIN_DROP` points and that the quantizer names (``hamjax.jaxpr.find_sites``)."""
    if found is None:
        return ()
    sites = {site.name for site in jaxpr.find_sites(apply_fn, params, data.val.x[:2])}
    mean = dict(zip(found.names, found.drops.mean(axis=1).tolist(), strict=True))
    return tuple(n for n in found.ranking if n in sites and "," not in n and mean[n] >= SKIP_MIN_DROP)[:2]


def optimize_auto(
    apply_fn,
    params,
    data,
    *,
    constraints=None,
    weights=None,
    budget: int = 8,
    seconds: float | None = None,
    strategy: str = "hybrid",
    knowledge=None,
    config=None,
    seed: int = 0,
    screenings: int | None = None,
    cheap_epochs: int = 1,
    memo: dict | None = None,
    selection_method: str = "tournament",
    folder=None,
    source: str = "local",
    learn: bool = True,
    echo=None,
) -> AutoResult:
    """Choose the compression recipe for a trained model under constraints, apply it and explain the choice.

    Args:
      apply_fn, params: the trained model (any model of the contract).
      data: a :class:`hamjax.data.Dataset` with a validation split: candidates are
        chosen on it; the test split is left for the caller's report.
      constraints: :class:`~hamjax.autotune.objective.Constraints` or a dict of its fields.
      weights: :class:`~hamjax.autotune.objective.Weights` or a dict of its fields.
      budget: full evaluations, >= 1 (cheap screenings do not count).
      seconds: stop proposing after this many wall seconds (``None``: no limit).
      strategy: one of :data:`STRATEGIES`.
      knowledge: a :class:`~hamjax.autotune.knowledge.KnowledgeBase`, its URL,
        ``"default"`` (the user's SQLite file) or ``None`` (no base). A URL
        that cannot be opened for writing falls back to reading it (or to
        an empty base), and the log says so.
      config: the reference config when the model is one, else ``None``.
      seed: seeds the strategies and every candidate's run.
      screenings: at most this many cheap screenings (finetunes capped at
        ``cheap_epochs``, no export, no latency) decide whether a candidate
        earns a full evaluation; later candidates get a full one at once.
        ``None``: three per unit of budget; 0: never screen.
      cheap_epochs: the finetune cap of a screening.
      memo: measurements of this model on this data to reuse and extend, by
        recipe (:class:`~hamjax.autotune.evaluate.Evaluator`); runs comparing
        strategies on one model share one. A reused measurement counts
        against ``budget`` like a new one.
      selection_method: ``"tournament"``, ``"roulette"`` or ``"rank"`` (ensemble only).
      folder: where candidates write their files (the chosen one's stay);
        ``None`` uses a temporary folder (the chosen files are in it until the
        process exits).
      source: the name this run's knowledge-base records carry.
      learn: add the run's full evaluations to the knowledge base.
      echo: called with each line of the decision log as it is written (``print`` shows progress), or ``None``.

    Returns:
      An :class:`AutoResult`.

    Raises:
      ValueError: a budget < 1, seconds <= 0, an unknown strategy, negative or
        all-zero weights, invalid constraints, a dataset without a validation
        split; :class:`~hamjax.autotune.knowledge.KnowledgeBaseError` for a
        knowledge base that cannot be opened.
    """
    budget = check_int("optimize_auto", "budget", budget, minimum=1)
    if seconds is not None:
        check_positive("optimize_auto", "seconds", seconds)
    check_choice("optimize_auto", "strategy", strategy, STRATEGIES)
    check_choice("optimize_auto", "selection_method", selection_method, selection.METHODS)
    constraints, weights = _constraints(constraints), _weights(weights)
    screenings = 3 * budget if screenings is None else check_int("optimize_auto", "screenings", screenings, minimum=0)
    base = _knowledge(knowledge)
    evaluator = Evaluator(
        apply_fn, params, data, config=config, seed=seed, folder=folder, cheap_epochs=cheap_epochs, memo=memo
    )
    sig = signature.model_signature(apply_fn, params, data.train.x[:2])
    notes: dict = {
        "suggested": 0,
        "added": 0,
        "judged": 0,
        "proved_wrong": 0,
        "warnings": list(getattr(base, "warnings", []) or []),
    }
    suggested = [] if base is None else list(base.suggest(sig, constraints))
    notes["suggested"] = len(suggested)
    early: list[str] = []  # said once the loop exists, in this order
    sensitivities = explain(apply_fn, params, data, early.append)
    sensitive = sensitive_sites(apply_fn, params, data, sensitivities.get("quantize"))
    candidates = space.RecipeSpace(sig, reference=config is not None, tokens=_tokens(config), sensitive=sensitive)
    names = ENSEMBLE if strategy == "ensemble" else (strategy,)
    made = {
        name: strategies.make(name, candidates, sig, constraints, weights, seed=seed, priors=suggested or None)
        for name in names
    }
    loop = Loop(
        evaluator,
        made,
        constraints,
        weights,
        seed=seed,
        selection_method=selection_method,
        screen_limit=screenings,
        echo=echo,
    )
    baseline = evaluator.baseline().measured
    for warning in notes["warnings"]:
        loop.say(f"knowledge base: {warning}")
    loop.say(f"model: family {sig.family} ({'; '.join(sig.evidence)}), {sig.params} params")
    loop.say(f"baseline: {describe(baseline, baseline)}")
    for line in early:
        loop.say(line)
    if sensitive:
        loop.say(f"the search may keep in float the layers int8 hurts most: {', '.join(sensitive)}")
    for raw, weight, why in suggested:
        loop.say(f"knowledge base suggests {raw.get('name', 'a recipe')} (weight {weight:.2f}): {why}")
    started, index = time.perf_counter(), 0
    while loop.full < budget and (seconds is None or time.perf_counter() - started < seconds):
        index += 1
        try:
            loop.step(index)
        except strategies.Exhausted as err:
            loop.say(f"[{index}] the space is exhausted: {err}")
            break
    unmet = _unmet(loop.history, constraints)
    if loop.best is None:
        never = f"never met: {', '.join(unmet)}" if unmet else "each met some constraints, none met them all"
        loop.say(f"no feasible recipe in {loop.full} full evaluations; {never}")
        chosen, outcome = None, None
    else:
        chosen, outcome = loop.best
        if outcome.context is None:  # measured in an earlier run (memo): make the model again
            outcome = evaluator.run(chosen.recipe, "full", name="chosen", reuse=False)
        loop.say(f"chosen {summary(chosen.recipe)}: the best score ({chosen.score:.3f}) of the feasible ones")
    if base is not None and learn and not getattr(base, "read_only", False):
        notes.update(_learn(base, sig, loop.history, baseline, constraints, source, suggested))
    context = None if outcome is None else outcome.context
    paths = {} if context is None else {k: v.path for k, v in context.extras.items() if k.startswith("onnx ")}
    return AutoResult(
        recipe=None if chosen is None else chosen.recipe,
        feasible=chosen is not None,
        apply_fn=None if context is None else context.apply_fn,
        params=None if context is None else context.params,
        quantized=None if context is None else context.extras.get("quantized"),
        measured=None if chosen is None else chosen.measured,
        baseline=baseline,
        unmet=unmet,
        history=loop.history,
        log=loop.log,
        signature=sig,
        paths=paths,
        context=context,
        sensitivity=sensitivities,
        knowledge=notes,
    )
