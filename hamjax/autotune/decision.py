"""One decision of the recipe space, and the canonical key of a recipe.

:class:`Decision` is one choice in the sequence :class:`hamjax.autotune.space.RecipeSpace`
walks (use a step or not, or one field of a step); :func:`key` names a recipe by its
steps, so equal recipes meet as one in histories, memos and knowledge bases.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from hamjax import recipes

__all__ = ["TRAINING_FIELDS", "Decision", "key", "storage_key"]


@dataclasses.dataclass(frozen=True)
class Decision:
    """One choice in the decision sequence.

    Attributes:
      name: ``"steps.<kind>"`` (use the step or not) or ``"<kind>.<field>"``.
      choices: the values of a discrete decision, or ``None``.
      low, high: the range of a continuous decision.
      resolution: continuous values are rounded to a multiple of it.
      default: the value a rule that says nothing about the decision takes.

    Examples:
      >>> from hamjax.autotune.decision import Decision
      >>> d = Decision("prune.sparsity", low=0.1, high=0.9, resolution=0.01, default=0.5)
      >>> d.continuous, d.clip(0.934)
      (True, 0.9)
    """

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    resolution: float = 0.01
    default: Any = None

    @property
    def continuous(self) -> bool:
        """Whether the decision takes values in a range rather than from choices."""
        return self.choices is None

    def clip(self, value: float) -> float:
        """``value`` rounded to the resolution and clipped into ``[low, high]``."""
        rounded = round(round(float(value) / self.resolution) * self.resolution, 6)
        return float(min(max(rounded, self.low), self.high))

    def accepts(self, value) -> bool:
        """Whether ``value`` is one of this decision's values (a continuous value must sit on the grid)."""
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        return isinstance(value, float) and self.low <= value <= self.high and self.clip(value) == value

    def uniform(self, rng: np.random.Generator):
        """A value drawn uniformly from the choices or the range."""
        if self.choices is not None:
            return self.choices[int(rng.integers(len(self.choices)))]
        return self.clip(rng.uniform(self.low, self.high))


def key(recipe: recipes.Recipe) -> str:
    """A canonical string of a recipe's steps (name and description aside): equal recipes, equal keys.

    Examples:
      >>> from hamjax import recipes
      >>> from hamjax.autotune.decision import key
      >>> a = recipes.validate({"name": "a", "steps": [{"kind": "prune", "sparsity": 0.5}]})
      >>> b = recipes.validate({"name": "b", "steps": [{"kind": "prune", "sparsity": 0.50, "method": "magnitude"}]})
      >>> key(a) == key(b)
      True
    """
    steps = [{"kind": s.kind, **{k: v for k, v in s.params.items() if v is not None}} for s in recipe.steps]
    return json.dumps(steps, sort_keys=True, separators=(",", ":"))


TRAINING_FIELDS = frozenset(
    {
        "finetune_epochs",
        "epochs",
        "learning_rate",
        "batch_size",
        "temperature",
        "alpha",
        "stage",
        "schedule",
        "cycles",
        "calibration_method",
        "percentile",
        "calibration_batches",
    }
)
"""Step fields that change how a model is trained or calibrated, not what it stores."""


def storage_key(recipe: recipes.Recipe) -> str:
    """:func:`key` without the fields that leave the stored weights' size alone (:data:`TRAINING_FIELDS`, and the
    quantize step's ``method`` and ``act_bits``: activation ranges are a few floats).

    Two recipes with one storage key store weights of the same size (to a few activation scales), so a size limit
    one of them broke, the other breaks too.

    Examples:
      >>> from hamjax import recipes
      >>> from hamjax.autotune.decision import storage_key
      >>> a = recipes.validate({"name": "a", "steps": [{"kind": "prune", "finetune_epochs": 1}, {"kind": "quantize"}]})
      >>> b = recipes.validate(
      ...     {"name": "b", "steps": [{"kind": "prune", "finetune_epochs": 9}, {"kind": "quantize", "method": "dynamic"}]}
      ... )
      >>> storage_key(a) == storage_key(b), storage_key(a) == key(a)
      (True, False)
    """
    steps = []
    for step in recipe.steps:
        drop = TRAINING_FIELDS | ({"method", "act_bits"} if step.kind == "quantize" else set())
        steps.append({"kind": step.kind, **{k: v for k, v in step.params.items() if v is not None and k not in drop}})
    return json.dumps(steps, sort_keys=True, separators=(",", ":"))
