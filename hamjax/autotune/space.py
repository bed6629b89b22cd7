"""The recipe space autotune searches: which steps a model's family may use, and each step's fields.

A candidate is a :class:`hamjax.recipes.Recipe` that starts from the
trained model (no ``train`` step) and ends with an ``export`` step of the
precision the evaluation measures. :class:`RecipeSpace` writes the space as
a sequence of decisions, walked in order: first, for each step kind the
family allows (:data:`FAMILY_STEPS`, in the order the steps run), whether
the recipe uses it (``"steps.prune"``: ``True``/``False``); then, for each
step used, its fields (``"prune.method"``, ``"prune.sparsity"``...). A
decision is either discrete (:attr:`Decision.choices`) or continuous
(:attr:`Decision.low`, :attr:`Decision.high`, rounded to
:attr:`Decision.resolution` so equal recipes have equal keys). Which
decisions come next depends on the ones taken (a prune method's fields,
``shrink`` for structured methods): :meth:`RecipeSpace.next_decision`.

The family table (:data:`FAMILY_STEPS`) and why:

* every family: ``prune`` (``magnitude``: unstructured, same dense size;
  ``groups`` with ``shrink = true``: channel groups of any model, physically
  smaller), ``lowrank`` (truncated SVD by ``energy``), ``quantize``
  (``weight_only``/``dynamic``/``static`` int8); ``distill`` when the
  caller allows it (it trains a student: the most expensive step); and,
  when asked for and the export is not int8, ``precision`` (bfloat16
  compute): its ONNX file holds bfloat16 ``Gemm`` nodes that onnxruntime's
  CPU provider cannot load (checked), so it is off by default;
* ``cnn``, ``hybrid``: ``fold`` (batch norms into the layers before them),
  when the signature counts norms;
* ``transformer``, ``vit``, ``hybrid``: ``fuse`` (one fused attention op);
* ``vit``, ``hybrid`` reference models: ``merge`` (token merging needs the
  blocks the reference ViT and HAMNet mark);
* reference models: the prune step's granularities of the family
  (:data:`REFERENCE_PRUNE`: ``neurons``, ``channels``, ``heads``).

Per-layer skipping in ``quantize`` is not part of the space: the recipe
step has no such field.

Examples:
  >>> import numpy as np
  >>> from hamjax.autotune.space import RecipeSpace
  >>> space = RecipeSpace("mlp", export="int8")
  >>> recipe = space.sample(np.random.default_rng(0))
  >>> [step.kind for step in recipe.steps][-2:]
  ['quantize', 'export']
  >>> space.key(recipe) == space.key(space.build(space.fields(recipe)))
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hamjax import recipes
from hamjax._checks import check_choice, check_int, check_number
from hamjax.autotune.decision import Decision, key

__all__ = ["EXPORTS", "FAMILIES", "FAMILY_STEPS", "REFERENCE_PRUNE", "Decision", "RecipeSpace", "key"]

FAMILIES = ("mlp", "cnn", "transformer", "vit", "hybrid")
"""The model families a signature names."""

EXPORTS = ("int8", "fp32", "auto")
"""What the export step writes: int8 (every candidate quantizes), fp32 (none does) or auto (int8 exactly when it quantizes)."""

FAMILY_STEPS = {
    "mlp": ("distill", "prune", "lowrank", "quantize", "precision"),
    "cnn": ("distill", "fold", "prune", "lowrank", "quantize", "precision"),
    "transformer": ("distill", "prune", "lowrank", "fuse", "quantize", "precision"),
    "vit": ("distill", "prune", "lowrank", "merge", "fuse", "quantize", "precision"),
    "hybrid": ("distill", "fold", "prune", "lowrank", "merge", "fuse", "quantize", "precision"),
}
"""The step kinds each family may use (conditions in the module docstring), in the order they run: the student
first, folding before pruning, merge and fuse after the weight changes (they re-read the jaxpr), int8 or bfloat16
last before the export."""

REFERENCE_PRUNE = {
    "mlp": ("neurons",),
    "cnn": ("channels", "neurons"),
    "transformer": (),
    "vit": ("heads", "neurons"),
    "hybrid": ("heads", "neurons"),
}
"""The structured prune granularities a reference model of each family adds to ``magnitude`` and ``groups``."""

FINETUNE_EPOCHS = (1, 3, 10, 30, 60)
"""The finetune epochs offered by default: an MLP or CNN recovers in a few; a small attention model needs tens."""

LEARNING_RATES = (5e-4, 2e-3)
"""The prune finetune learning rates offered by default: the step's default, and a faster one for long finetunes."""


def _family(signature) -> str:
    family = signature if isinstance(signature, str) else getattr(signature, "family", None)
    return check_choice("RecipeSpace", "signature.family", family, FAMILIES)


def _has_norms(signature) -> bool:
    """Whether the signature counts norm sites; a family name alone (no signature) is taken to have them."""
    return True if isinstance(signature, str) else getattr(signature, "norm", 0) > 0


class RecipeSpace:
    """The recipes autotune may propose for one model, as a sequence of decisions.

    Args:
      signature: the model's :class:`hamjax.autotune.signature.Signature`
        (its ``family`` and norm count are read), or a family name.
      reference: the model is a hamjax reference model (its config is
        known): the family's structured granularities and ``merge`` join.
      export: ``"int8"``, ``"fp32"`` or ``"auto"`` (:data:`EXPORTS`).
      steps: the step kinds to offer, a subset of the family's
        (:data:`FAMILY_STEPS`); ``None``: all of them but ``distill`` and ``precision``.
      distill: offer ``distill`` too (``steps=None`` only).
      precision: offer ``precision`` too (``steps=None`` only).
      finetune: the finetune epochs offered to prune and lowrank (small
        attention models recover from a cut of their channel groups only
        after tens of epochs, hence the long choices).
      learning_rates: the finetune learning rates offered to prune.
      sensitive: weight sites (``hamjax.jaxpr.find_sites`` names), most
        sensitive to int8 first (:func:`hamjax.autotune.layer_sensitivity`):
        ``quantize`` then offers ``skip`` of none, the first, or the first two
        (kept in float); empty: no ``skip`` decision.
      tokens: the tokens entering the first attention block, when known:
        ``merge`` offers ``r`` up to ``tokens / (blocks + 1)`` (each block
        can merge at most half of the tokens it gets; blocks are the
        signature's attention sites); ``None``: ``r = 1`` only.

    Raises:
      ValueError: an unknown family or export, or a step kind the family does not offer.

    Examples:
      >>> from hamjax.autotune.space import RecipeSpace
      >>> RecipeSpace("cnn", export="int8").kinds
      ('fold', 'prune', 'lowrank', 'quantize')
      >>> RecipeSpace("vit", reference=True, export="fp32").kinds
      ('prune', 'lowrank', 'merge', 'fuse')
    """

    def __init__(
        self,
        signature,
        *,
        reference: bool = False,
        export: str = "int8",
        steps: Sequence[str] | None = None,
        distill: bool = False,
        precision: bool = False,
        finetune: Sequence[int] = FINETUNE_EPOCHS,
        learning_rates: Sequence[float] = LEARNING_RATES,
        sensitive: Sequence[str] = (),
        tokens: int | None = None,
    ):
        self.signature = signature
        self.family = _family(signature)
        self.reference = bool(reference)
        self.export = check_choice("RecipeSpace", "export", export, EXPORTS)
        optional = {"distill": distill, "precision": precision}
        offered = [k for k in FAMILY_STEPS[self.family] if steps is not None or optional.get(k, True)]
        if "fold" in offered and not _has_norms(signature):
            offered.remove("fold")
        if "merge" in offered and not self.reference:
            offered.remove("merge")
        if self.export == "int8":
            offered = [k for k in offered if k != "precision"]
        if self.export == "fp32":
            offered = [k for k in offered if k != "quantize"]
        if steps is not None:
            for kind in steps:
                check_choice("RecipeSpace", "steps", kind, FAMILY_STEPS[self.family])
            offered = [k for k in offered if k in steps]
        self.kinds = tuple(offered)
        self.finetune = tuple(check_int("RecipeSpace", "finetune", e, minimum=0) for e in finetune)
        self.learning_rates = tuple(
            check_number("RecipeSpace", "learning_rates", r, minimum=0.0, exclusive_minimum=True)
            for r in learning_rates
        )
        if isinstance(sensitive, str) or not all(isinstance(n, str) and n and "," not in n for n in sensitive):
            raise ValueError(
                f"RecipeSpace: sensitive must be a sequence of site names without commas, got {sensitive!r}"
            )
        self.sensitive = tuple(sensitive)
        if not self.finetune or not self.learning_rates:
            raise ValueError("RecipeSpace: finetune and learning_rates must each offer at least one choice")
        blocks = max(getattr(signature, "attention", 1), 1)
        most = 1 if tokens is None else check_int("RecipeSpace", "tokens", tokens, minimum=2) // (blocks + 1)
        self.merge_choices = tuple(r for r in (1, 2, 4, 8, 16) if r <= max(most, 1))
        self.prune_methods = ("groups", "magnitude", *(REFERENCE_PRUNE[self.family] if self.reference else ()))
        self._fields = self._field_decisions()

    def _field_decisions(self) -> dict[str, tuple[Decision, ...]]:
        d = Decision
        epochs = d("", choices=self.finetune, default=self.finetune[0])
        return {
            "distill": (
                d("distill.param_ratio", low=0.1, high=0.6, resolution=0.01, default=0.3),
                d("distill.temperature", low=1.0, high=8.0, resolution=0.1, default=4.0),
                d("distill.epochs", choices=(5, 10), default=5),
            ),
            "fold": (),
            "prune": (
                d("prune.method", choices=self.prune_methods, default="groups"),
                d("prune.sparsity", low=0.1, high=0.9, resolution=0.01, default=0.5),
                dataclasses.replace(epochs, name="prune.finetune_epochs"),
                d("prune.learning_rate", choices=self.learning_rates, default=self.learning_rates[0]),
            ),
            "lowrank": (
                d("lowrank.energy", low=0.5, high=0.99, resolution=0.005, default=0.9),
                dataclasses.replace(epochs, name="lowrank.finetune_epochs"),
            ),
            "merge": (
                d("merge.r", choices=self.merge_choices, default=self.merge_choices[len(self.merge_choices) // 2]),
            ),
            "fuse": (),
            "quantize": (
                d("quantize.method", choices=("static", "dynamic", "weight_only"), default="static"),
                *self._skip_decisions(),
            ),
            "precision": (d("precision.finetune_epochs", choices=(0, 1), default=1),),
        }

    def _skip_decisions(self) -> tuple[Decision, ...]:
        if not self.sensitive:
            return ()
        choices = ("", *(",".join(self.sensitive[: k + 1]) for k in range(min(len(self.sensitive), 2))))
        return (Decision("quantize.skip", choices=choices, default=""),)

    def __repr__(self) -> str:
        return f"RecipeSpace(family={self.family!r}, reference={self.reference}, export={self.export!r}, kinds={self.kinds})"

    def next_decision(self, taken: Sequence[tuple[str, Any]]) -> Decision | None:
        """The decision after the ``(name, value)`` pairs ``taken`` so far, or ``None`` when the recipe is complete.

        The step decisions come first, one per offered kind. A forced step
        (``quantize`` under ``export="int8"``; the last kind when nothing
        else was chosen, so no candidate is the dense model) offers
        ``True`` only; ``precision`` is not offered once ``quantize`` is
        used, nor ``merge`` after ``lowrank``, nor the ``groups`` prune
        method with ``merge`` (token merging fails on the rewritten model; checked).

        Args:
          taken: the decisions taken, in order.

        Returns:
          A :class:`Decision`, or ``None``.
        """
        values = dict(taken)
        for i, kind in enumerate(self.kinds):
            name = f"steps.{kind}"
            if name in values:
                continue
            used = [k for k in self.kinds[:i] if values.get(f"steps.{k}")]
            if kind == "quantize" and self.export == "int8":
                return Decision(name, choices=(True,), default=True)
            if (kind == "precision" and "quantize" in used) or (kind == "merge" and "lowrank" in used):
                return Decision(name, choices=(False,), default=False)
            rest = self.kinds[i + 1 :]
            last = not rest or (rest == ("precision",) and values.get("steps.quantize"))
            if not used and last:
                return Decision(name, choices=(True,), default=True)
            return Decision(name, choices=(True, False), default=False)
        for kind in self.kinds:
            if not values.get(f"steps.{kind}"):
                continue
            for decision in self._fields[kind]:
                if decision.name in values:
                    continue
                if decision.name == "prune.method" and values.get("steps.merge"):
                    # merging cannot follow a channel-group shrink (the token axis is cut with the channels)
                    return dataclasses.replace(decision, choices=decision.choices[1:], default=decision.choices[1])
                return decision
        return None

    def complete(self, given: Mapping[str, Any], rng: np.random.Generator | None = None) -> tuple:
        """The full decision sequence that takes the values in ``given`` where they are allowed.

        A decision ``given`` does not name, or names with a value the
        decision does not allow, takes a value drawn uniformly with ``rng``
        or, without ``rng``, its default; continuous values are clipped onto
        the grid.

        Args:
          given: ``{decision name: value}`` (a rule, a partial path).
          rng: a ``numpy.random.Generator``, or ``None``.

        Returns:
          The ``(name, value)`` pairs in order; :meth:`build` makes the recipe.

        Examples:
          >>> from hamjax.autotune.space import RecipeSpace
          >>> space = RecipeSpace("mlp", steps=("prune", "quantize"))
          >>> space.complete({"steps.prune": True, "prune.sparsity": 0.734})[-2:]
          (('prune.learning_rate', 0.0005), ('quantize.method', 'static'))
        """
        taken: list[tuple[str, Any]] = []
        while (decision := self.next_decision(taken)) is not None:
            value = given.get(decision.name, None)
            if decision.continuous and isinstance(value, int | float) and not isinstance(value, bool):
                value = decision.clip(value)
            elif value is None or not decision.accepts(value):
                value = decision.uniform(rng) if rng is not None else decision.default
                if not decision.accepts(value):
                    value = decision.choices[0]
            taken.append((decision.name, value))
        return tuple(taken)

    def build(
        self, taken: Sequence[tuple[str, Any]], *, name: str = "autotune", description: str = ""
    ) -> recipes.Recipe:
        """The recipe of a complete decision sequence, validated by :func:`hamjax.recipes.validate`.

        Args:
          taken: ``(name, value)`` pairs from :meth:`complete`, :meth:`fields` or a search.
          name, description: the recipe's.

        Returns:
          A :class:`hamjax.recipes.Recipe` ending with the export step.

        Raises:
          ValueError: a sequence that is not complete or takes a value a decision does not allow.
        """
        taken = tuple(taken)
        for i, (dname, value) in enumerate(taken):
            decision = self.next_decision(taken[:i])
            if decision is None or decision.name != dname or not decision.accepts(value):
                raise ValueError(f"RecipeSpace.build: decision {i} ({dname}={value!r}) is not allowed here")
        if self.next_decision(taken) is not None:
            raise ValueError(f"RecipeSpace.build: the decisions stop before {self.next_decision(taken).name}")
        values = dict(taken)
        steps = [self._step(kind, values) for kind in self.kinds if values.get(f"steps.{kind}")]
        precision = "int8" if values.get("steps.quantize") else "fp32"
        steps.append({"kind": "export", "precisions": precision, "tensorrt": False})
        return recipes.validate({"name": name, "description": description, "steps": steps})

    def _step(self, kind: str, values: Mapping[str, Any]) -> dict:
        fields = {d.name.split(".", 1)[1]: values[d.name] for d in self._fields[kind]}
        if kind == "prune" and fields["method"] != "magnitude":
            fields["shrink"] = True
        if kind == "quantize":
            fields["bits"] = 8
        return {"kind": kind, **fields}

    def sample(self, rng: np.random.Generator) -> recipes.Recipe:
        """A recipe drawn uniformly decision by decision.

        Args:
          rng: a ``numpy.random.Generator``.

        Examples:
          >>> import numpy as np
          >>> from hamjax.autotune.space import RecipeSpace
          >>> RecipeSpace("cnn").sample(np.random.default_rng(1)).steps[-1].params["precisions"]
          'int8'
        """
        return self.build(self.complete({}, rng))

    def project(self, recipe: recipes.Recipe) -> tuple:
        """The decision sequence of the recipe of this space nearest to ``recipe``.

        The steps of ``recipe`` this space offers are kept with their
        fields where the decisions allow them (continuous values clipped
        onto the grid, other values replaced by the decision's default);
        steps the space does not offer are dropped. A knowledge-base recipe
        from another model becomes a candidate of this one this way.

        Args:
          recipe: any :class:`hamjax.recipes.Recipe`.

        Returns:
          The ``(name, value)`` pairs in order.

        Examples:
          >>> from hamjax import recipes
          >>> from hamjax.autotune.space import RecipeSpace
          >>> other = recipes.validate({"name": "x", "steps": [{"kind": "fold"}, {"kind": "prune", "sparsity": 0.333}]})
          >>> RecipeSpace("mlp", steps=("prune", "quantize")).project(other)[:3]
          (('steps.prune', True), ('steps.quantize', True), ('prune.method', 'magnitude'))
        """
        kinds = [step.kind for step in recipe.steps]
        params = {step.kind: dict(step.params) for step in recipe.steps}
        given: dict[str, Any] = {f"steps.{k}": k in kinds for k in self.kinds}
        for kind in self.kinds:
            for decision in self._fields[kind]:
                if kind in params:
                    given[decision.name] = params[kind].get(decision.name.split(".", 1)[1])
        return self.complete(given)

    def fields(self, recipe: recipes.Recipe) -> tuple:
        """The decision sequence of a recipe of this space (the inverse of :meth:`build`).

        Args:
          recipe: a :class:`hamjax.recipes.Recipe`.

        Returns:
          The ``(name, value)`` pairs in order.

        Raises:
          ValueError: a recipe this space cannot propose (another step,
            another field value, a value off the grid).
        """
        taken = self.project(recipe)
        try:
            same = key(self.build(taken)) == key(recipe)
        except recipes.RecipeError:
            same = False
        if not same:
            raise ValueError(f"RecipeSpace.fields: recipe {recipe.name!r} is not in this space ({self!r})")
        return taken

    def contains(self, recipe: recipes.Recipe) -> bool:
        """Whether :meth:`fields` can decompose ``recipe``."""
        try:
            self.fields(recipe)
        except ValueError:
            return False
        return True

    def key(self, recipe: recipes.Recipe) -> str:
        """:func:`key` of ``recipe`` (the module's function, for callers that hold a space)."""
        return key(recipe)
