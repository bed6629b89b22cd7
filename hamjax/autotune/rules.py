"""Rules of thumb per model family, as data: the recipes worth trying first, and priors for the tree search.

:data:`RULES` maps a family to its rules, most promising first. A rule is a
dict: ``decisions`` (values of :class:`hamjax.autotune.space.RecipeSpace`
decisions; the rest take their defaults), ``weight`` (how strongly it is
believed, in (0, 1]) and ``reason`` (said in the decision log). A rule
names steps a space may not offer (``merge`` on a custom ViT, ``quantize``
under an fp32 export): :func:`suggestions` projects it onto the space and
drops what does not fit, so one table serves every space.

Why these rules: dense layers shrink physically when whole channel groups go
(``groups`` + ``shrink``), which is what makes a dense kernel faster; int8
(static, calibrated) stores kernels in a quarter of the bytes (scales,
biases and norms stay float: a small model's storage shrinks about 3x, so
a 4x size target needs a cut as well) and runs integer kernels in
onnxruntime; folding batch norms first lets the quantizer see the folded
kernels and removes a op per conv; attention activations change with every
input, so transformers quantize ``dynamic``; fusing attention and merging
tokens (ToMe) cut a transformer's time without touching its weights.

:func:`suggestions` lists full recipes: the knowledge base's first (by its
weights), then the family's rules, one recipe per key.
:class:`Priors` turns the same weighted recipes into prior probabilities
over each decision for PUCT, and centres for new continuous values.

Examples:
  >>> from hamjax.autotune import rules
  >>> from hamjax.autotune.space import RecipeSpace
  >>> first = rules.suggestions(RecipeSpace("mlp"))[0]
  >>> [s.kind for s in first.recipe.steps], first.source
  (['prune', 'quantize', 'export'], 'rules')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from hamjax import recipes
from hamjax.autotune import space as space_mod
from hamjax.autotune.space import Decision, RecipeSpace

__all__ = ["RULES", "Priors", "Suggestion", "neighbour_priority", "priors_for", "shrinks", "suggestions"]

_Q = {"steps.quantize": True, "steps.precision": True}  # int8 where the space quantizes, else bfloat16
_STATIC, _DYNAMIC = {**_Q, "quantize.method": "static"}, {**_Q, "quantize.method": "dynamic"}


def _prune(method: str, sparsity: float, epochs: int = 3, learning_rate: float | None = None) -> dict:
    # deeper cuts get longer finetunes: half the channel groups of the bench's MLP lose 3.3 points after 3 epochs
    out = {"steps.prune": True, "prune.method": method, "prune.sparsity": sparsity, "prune.finetune_epochs": epochs}
    return out if learning_rate is None else {**out, "prune.learning_rate": learning_rate}


# Small attention models lose tens of points when a quarter of their channel groups go and need tens of epochs at a
# faster rate to win them back (bench/autotune.py's ViT and plain-jnp transformer: 60 epochs at 2e-3 end within a
# point of dense; 3 epochs end 10 points below it).
_LONG = {"epochs": 60, "learning_rate": 2e-3}


def _rule(reason: str, weight: float, *parts: dict) -> dict:
    decisions: dict[str, Any] = {}
    for part in parts:
        decisions.update(part)
    return {"decisions": decisions, "weight": weight, "reason": reason}


_OPTIONAL = ("steps.fold", "steps.fuse")  # a rule still applies without these when the space lacks them
_FOLD = {"steps.fold": True}
_FUSE = {"steps.fuse": True}
_LOWRANK = {"steps.lowrank": True, "lowrank.energy": 0.9, "lowrank.finetune_epochs": 3}

RULES: dict[str, tuple[dict, ...]] = {
    "mlp": (
        _rule(
            "dense layers shrink physically by channel groups; static int8 stores kernels in a quarter of the bytes",
            1.0,
            _prune("groups", 0.5, 10),
            _STATIC,
        ),
        _rule(
            "reference MLP: remove half the hidden neurons and shrink; static int8",
            0.9,
            _prune("neurons", 0.5, 10),
            _STATIC,
        ),
        _rule("static int8 alone: int8 kernels, usually well under a point of accuracy", 0.7, _STATIC),
        _rule("a deeper cut of channel groups when accuracy has room", 0.6, _prune("groups", 0.7, 30), _STATIC),
        _rule("a gentle cut of channel groups when accuracy is tight", 0.5, _prune("groups", 0.3), _STATIC),
        _rule("low-rank kernels keep 90% of the spectrum's energy; static int8", 0.4, _LOWRANK, _STATIC),
        _rule("dynamic int8 needs no calibration, after channel groups", 0.3, _prune("groups", 0.5), _DYNAMIC),
    ),
    "cnn": (
        _rule(
            "fold batch norms first, shrink channel groups, then static int8 on the folded kernels",
            1.0,
            _FOLD,
            _prune("groups", 0.5, 10),
            _STATIC,
        ),
        _rule(
            "reference CNN: remove half the channels and shrink, after folding; static int8",
            0.9,
            _FOLD,
            _prune("channels", 0.5, 10),
            _STATIC,
        ),
        _rule("fold batch norms and static int8: int8 kernels, convolutions keep their shapes", 0.7, _FOLD, _STATIC),
        _rule("a gentle cut of channel groups when accuracy is tight", 0.6, _FOLD, _prune("groups", 0.3), _STATIC),
        _rule("a deeper cut of channel groups when accuracy has room", 0.5, _FOLD, _prune("groups", 0.7, 30), _STATIC),
        _rule("low-rank kernels after folding; static int8", 0.4, _FOLD, _LOWRANK, _STATIC),
    ),
    "transformer": (
        _rule(
            "a quarter of the channel groups (heads, MLP widths), shrunk and finetuned long (small attention models "
            "recover slowly); fused attention, dynamic int8 (attention activations vary per input)",
            1.0,
            _prune("groups", 0.25, **_LONG),
            _FUSE,
            _DYNAMIC,
        ),
        _rule("fuse attention into one op; dynamic int8 alone", 0.9, _FUSE, _DYNAMIC),
        _rule(
            "a third of the channel groups, finetuned long; fused attention and dynamic int8",
            0.8,
            _prune("groups", 0.35, **_LONG),
            _FUSE,
            _DYNAMIC,
        ),
        _rule(
            "half the channel groups, finetuned long; fused attention and dynamic int8",
            0.6,
            _prune("groups", 0.5, **_LONG),
            _FUSE,
            _DYNAMIC,
        ),
        _rule(
            "weight-only int8 keeps activations in float where dynamic ranges hurt",
            0.4,
            _FUSE,
            {**_Q, "quantize.method": "weight_only"},
        ),
        _rule("low-rank projections keep 90% of the energy; dynamic int8", 0.3, _LOWRANK, _FUSE, _DYNAMIC),
    ),
    "vit": (
        _rule(
            "ToMe token merging (reference ViT) and fused attention cut time without retraining; dynamic int8",
            1.0,
            {"steps.merge": True, "merge.r": 2},
            _FUSE,
            _DYNAMIC,
        ),
        _rule(
            "a quarter of the channel groups, shrunk and finetuned long (small attention models recover slowly); "
            "fused attention, dynamic int8",
            0.95,
            _prune("groups", 0.25, **_LONG),
            _FUSE,
            _DYNAMIC,
        ),
        _rule(
            "reference ViT: prune a quarter of the heads and shrink, finetuned long; fused attention, dynamic int8",
            0.9,
            _prune("heads", 0.25, **_LONG),
            _FUSE,
            _DYNAMIC,
        ),
        _rule("fused attention and dynamic int8 alone", 0.6, _FUSE, _DYNAMIC),
        _rule(
            "a third of the channel groups, finetuned long; fused attention and dynamic int8",
            0.5,
            _prune("groups", 0.35, **_LONG),
            _FUSE,
            _DYNAMIC,
        ),
    ),
    "hybrid": (
        _rule(
            "fold the conv stem's batch norms, a gentle cut of channel groups, static int8",
            1.0,
            _FOLD,
            _prune("groups", 0.3),
            _FUSE,
            _STATIC,
        ),
        _rule(
            "fold, merge tokens (reference HAMNet) and fuse attention; dynamic int8",
            0.8,
            _FOLD,
            {"steps.merge": True, "merge.r": 2},
            _FUSE,
            _DYNAMIC,
        ),
        _rule("fold and dynamic int8 with fused attention", 0.6, _FOLD, _FUSE, _DYNAMIC),
        _rule("half the channel groups after folding; static int8", 0.5, _FOLD, _prune("groups", 0.5), _FUSE, _STATIC),
    ),
}
"""The rules per family, most promising first (see the module docstring)."""


class Suggestion(NamedTuple):
    """A full recipe worth trying, with how much it is believed and why.

    Attributes:
      recipe: a recipe of the space.
      weight: > 0; the knowledge base's weights as given, the rules' from :data:`RULES`.
      reason: a sentence for the decision log.
      source: ``"knowledge"`` or ``"rules"``.
    """

    recipe: recipes.Recipe
    weight: float
    reason: str
    source: str


def shrinks(decisions: dict) -> bool:
    """Whether a rule's decisions cut parameters (a structured prune, low-rank kernels or a distilled student)."""
    structured = decisions.get("steps.prune") and decisions.get("prune.method", "groups") != "magnitude"
    return bool(structured or decisions.get("steps.lowrank") or decisions.get("steps.distill"))


def suggestions(space: RecipeSpace, priors: Sequence[tuple] | None = None, constraints: Any = None) -> list[Suggestion]:
    """The recipes to try first: the knowledge base's suggestions by weight, taking turns with the family's rules.

    The base's best suggestion comes first, then the first rule, the base's
    second, the second rule, and so on: a base whose records are wrong (or
    from models less alike than they look) delays the rules by one
    evaluation in two, never skips them.

    Under a size limit (``constraints`` with ``max_size_bytes`` or
    ``min_size_reduction``) the rules that cut parameters (:func:`shrinks`)
    come before those that do not (int8 alone keeps float scales, biases and
    norms: rarely 4x on its own), each group in the table's order.

    Each is projected onto ``space`` (:meth:`RecipeSpace.project`); a
    recipe whose projection a suggestion before it already gave is left
    out, and so is a knowledge-base entry that does not validate. A rule
    whose decisions the space cannot take (a reference granularity on a
    custom model, token merging without marked blocks, int8 alone under an
    fp32 export: a step the rule does not name would be forced in) is left out; one
    that only loses ``fold`` or ``fuse`` stays, and its reason says so.

    Args:
      space: the :class:`RecipeSpace`.
      priors: ``(raw recipe dict, weight, reason)`` from
        :meth:`hamjax.autotune.knowledge.KnowledgeBase.suggest`, or ``None``.
      constraints: the run's :class:`hamjax.autotune.objective.Constraints`, or ``None``.

    Returns:
      A list of :class:`Suggestion`, without two of one key.

    Examples:
      >>> from hamjax.autotune import rules
      >>> from hamjax.autotune.space import RecipeSpace
      >>> export = {"kind": "export", "precisions": "int8", "tensorrt": False}
      >>> raw = {"name": "kb", "steps": [{"kind": "quantize", "method": "dynamic"}, export]}
      >>> found = rules.suggestions(RecipeSpace("mlp"), [(raw, 0.8, "3 similar models: feasible")])
      >>> found[0].source, found[0].reason
      ('knowledge', 'knowledge base: 3 similar models: feasible')
    """
    known: list[tuple] = []
    ruled: list[tuple] = []

    for raw, weight, reason in sorted(priors or (), key=lambda p: -float(p[1])):
        try:
            recipe = recipes.validate(raw)
        except recipes.RecipeError:
            continue
        taken = space.project(recipe)
        fits = "" if space.contains(recipe) else " (projected onto this model's space)"
        known.append((taken, weight, f"knowledge base: {reason}{fits}", "knowledge"))
    table = RULES[space.family]
    if constraints is not None and (constraints.max_size_bytes or constraints.min_size_reduction):
        table = sorted(table, key=lambda rule: not shrinks(rule["decisions"]))
    for rule in table:
        taken = space.complete(rule["decisions"])
        values = dict(taken)
        used = {k.split(".")[1] for k, v in values.items() if k.startswith("steps.") and v}
        named = {
            k: v
            for k, v in rule["decisions"].items()
            if k not in _Q and (k.startswith("steps.") or k.split(".")[0] in used)
        }
        # epochs are the space's budget, merge's r is bounded by the tokens and continuous values are clipped
        # onto the space's range: none of these is the rule's point
        missing = [
            k
            for k, v in named.items()
            if values.get(k) != v and not k.endswith(("epochs", ".r")) and not isinstance(v, float)
        ]
        if any(k not in _OPTIONAL for k in missing) or any(not rule["decisions"].get(f"steps.{k}") for k in used):
            continue  # the rule's point is not in this space (a reference granularity, token merging, int8)
        note = f" ({', '.join(k.split('.')[1] for k in missing)}: not in this space)" if missing else ""
        if rule["decisions"].get("steps.quantize") and not values.get("steps.quantize"):
            instead = "bfloat16 in place of int8" if values.get("steps.precision") else "without int8"
            note += f" ({instead}: this space exports fp32)"
        ruled.append((taken, rule["weight"], rule["reason"] + note, "rules"))
    found: list[Suggestion] = []
    seen: set[str] = set()
    for i in range(max(len(known), len(ruled))):
        for taken, weight, reason, source in known[i : i + 1] + ruled[i : i + 1]:
            recipe = space.build(taken, description=reason)
            key = space_mod.key(recipe)
            if key not in seen:
                seen.add(key)
                found.append(Suggestion(recipe, float(weight), reason, source))
    return found


class Priors:
    """Prior probabilities over each decision, from weighted full decision sequences.

    For a decision reached by the discrete decisions ``taken`` so far, the
    sequences that agree with every discrete decision taken vote for their
    value with their weight; every choice also gets ``smooth`` times the
    mean vote, so nothing is ruled out. Continuous decisions get the
    agreeing sequences' values as centres for new values.

    Args:
      paths: ``(decision sequence, weight)`` pairs.
      smooth: the share of the mean vote every choice gets.

    Examples:
      >>> from hamjax.autotune.rules import Priors
      >>> from hamjax.autotune.space import Decision
      >>> p = Priors([((("steps.prune", True),), 3.0)])
      >>> p.probabilities((), Decision("steps.prune", choices=(True, False))).round(3).tolist()
      [0.9, 0.1]
    """

    def __init__(self, paths: Sequence[tuple[tuple, float]], smooth: float = 0.25):
        self.paths = [(dict(taken), float(weight)) for taken, weight in paths if weight > 0]
        self.smooth = float(smooth)

    def __bool__(self) -> bool:
        return bool(self.paths)

    def _agreeing(self, taken: Sequence[tuple[str, Any]]):
        discrete = [(n, v) for n, v in taken if not isinstance(v, float)]
        return [(p, w) for p, w in self.paths if all(p.get(n, v) == v for n, v in discrete)]

    def probabilities(self, taken: Sequence[tuple[str, Any]], decision: Decision) -> np.ndarray:
        """The prior over ``decision.choices`` after ``taken``; uniform without agreeing sequences."""
        n = len(decision.choices)
        votes = np.zeros(n)
        for path, weight in self._agreeing(taken):
            for i, choice in enumerate(decision.choices):
                if (
                    decision.name in path
                    and path[decision.name] == choice
                    and type(path[decision.name]) is type(choice)
                ):
                    votes[i] += weight
        total = votes.sum()
        if total == 0:
            return np.full(n, 1.0 / n)
        votes += self.smooth * total / n
        return votes / votes.sum()

    def centres(self, taken: Sequence[tuple[str, Any]], decision: Decision) -> list[tuple[float, float]]:
        """``(value, weight)`` of the agreeing sequences for a continuous ``decision``."""
        return [(p[decision.name], w) for p, w in self._agreeing(taken) if decision.name in p]


def priors_for(space: RecipeSpace, priors: Sequence[tuple] | None = None) -> Priors:
    """:class:`Priors` from :func:`suggestions` (the knowledge base's and the rules' recipes, weighted).

    Examples:
      >>> from hamjax.autotune import rules
      >>> from hamjax.autotune.space import RecipeSpace
      >>> space = RecipeSpace("cnn")
      >>> p = rules.priors_for(space)
      >>> float(p.probabilities((), space.next_decision(()))[0]) > 0.5  # fold: True first
      True
    """
    return Priors([(space.fields(s.recipe), s.weight) for s in suggestions(space, priors)])


def neighbour_priority(name: str, old, new, violations: Sequence[str]) -> int:
    """How soon the rules strategy tries changing decision ``name`` from ``old`` to ``new`` (lower: sooner).

    The change follows what the evaluation lacks: short of accuracy alone, a
    longer finetune first, then a gentler cut, then the other rate, then
    keeping a sensitive layer in float; short of size, a deeper cut, then
    another cutting step; feasible, a deeper cut or fewer kept singular
    values (more score: the bold move halfway to the range's end before the
    small step), then the other fields; step toggles come last.

    Examples:
      >>> from hamjax.autotune import rules
      >>> rules.neighbour_priority("prune.finetune_epochs", 3, 10, ("max_accuracy_drop: dropped 3 points > 1 allowed",))
      0
      >>> rules.neighbour_priority("prune.sparsity", 0.5, 0.7, ())
      0
      >>> rules.neighbour_priority("steps.lowrank", False, True, ())
      6
    """
    short = {v.split(":", 1)[0] for v in violations}
    field = name.split(".", 1)[-1]
    up = isinstance(new, int | float) and not isinstance(new, bool) and new > old
    if short == {"max_accuracy_drop"}:
        table = {"finetune_epochs": 0 if up else 5, "sparsity": 1 if not up else 5, "learning_rate": 2}
        table["skip"] = 3 if len(str(new)) > len(str(old)) else 5
        return table.get(field, 6 if name.startswith("steps.") else 4)
    if short & {"min_size_reduction", "max_size_bytes"}:
        cut = {"steps.prune", "steps.lowrank", "steps.distill"}
        if field == "sparsity":
            return 0 if up else 5
        if name in cut and new is True:
            return 1
        return 2 if field == "skip" and len(str(new)) < len(str(old)) else (6 if name.startswith("steps.") else 4)
    if not short:
        if (field == "sparsity" and up) or (field == "energy" and not up):
            return 0 if abs(new - old) > 0.1 else 1  # the bold move halfway to the end first, then the small step
        return 6 if name.startswith("steps.") else 3
    return 6 if name.startswith("steps.") else 3
