"""What a study searches: :class:`Space`, from a TOML-style table or a recipe's ``[steps.search]`` tables.

A space maps names to ranges ``{low, high[, log, step]}`` or lists
``{choices = [...]}`` (the recipe format, :meth:`hamjax.recipes.Field.check_search`),
and optionally to plain values that stay fixed. Two kinds of names:

* traced (:data:`TRACED`: :data:`hamjax.search.member_hparams.HYPERPARAMETERS`
  but ``decay_steps``): per-member ``(P,)`` arrays of one
  :class:`hamjax.search.population.Population`, so a whole batch of trials
  trains in one compiled call. Among them ``warmup_steps`` (a linear ramp of
  the learning rate from 0 over that many of the trial's own steps, scaled
  ``min(1, (t + 1) / warmup_steps)``) and ``mixup`` (the Beta(a, a) strength
  of :func:`hamjax.augment.mixup`, 0 off);
* bucketed (:data:`BUCKETED`: ``batch_size``, ``schedule``, ``width``,
  ``depth``, ``activation``): they change the compiled program, so the
  trials of one combination of values (one bucket) train together and each
  bucket compiles once. ``schedule`` is ``"constant"`` or ``"cosine"``
  (:data:`CHOICES`): a cosine trial's learning rate decays to 0 over its
  epochs' steps after its warm-up (its members carry ``decay_steps``;
  constant ones do not). ``width`` and ``depth`` (integers >= 1) and
  ``activation`` (one of :data:`CHOICES`' ``relu``, ``gelu``, ``tanh``,
  ``silu``) are structural (:data:`hamjax.tune.models.STRUCTURAL`):
  :func:`hamjax.tune.run` builds the model of each structure once with its
  ``model=`` builder, which gets the trial's structural values as keywords
  (``model(width=w, depth=d, activation=a) -> (apply_fn, params)``: the
  builder decides what they set, e.g. a reference model's hidden sizes,
  number of hidden layers and activation, :func:`hamjax.tune.models.reference`),
  so the trials of one structure train together as one population.
  Structures are buckets rather than NAS supernet masks: any model the
  builder makes can be searched, and a trial trains exactly the model it scores.

Anything else is refused: it would need a compile per trial.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hamjax.models.mlp import ACTIVATIONS
from hamjax.quant import MAX_BITS, MIN_BITS
from hamjax.search.trainer import HYPERPARAMETERS

TRACED = tuple(n for n in HYPERPARAMETERS if n != "decay_steps")  # a cosine schedule's: set from the trial's steps
BUCKETED = ("batch_size", "schedule", "width", "depth", "activation")
SEARCHABLE = TRACED + BUCKETED
INTEGER = ("bits", "batch_size", "warmup_steps", "width", "depth")
CHOICES = {"schedule": ("constant", "cosine"), "activation": tuple(ACTIVATIONS)}
"""The names that take one of a few words, and those words."""

# name -> (lowest, highest, whether the highest is allowed)
LIMITS = {
    "learning_rate": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False),
    "sparsity": (0.0, 1.0, False),
    "bits": (MIN_BITS, MAX_BITS, True),
    "temperature": (0.0, math.inf, False),
    "alpha": (0.0, 1.0, True),
    "augment": (0.0, 1.0, True),
    "label_smoothing": (0.0, 1.0, False),
    "mixup": (0.0, math.inf, False),
    "warmup_steps": (0, math.inf, False),
    "batch_size": (1, math.inf, False),
    "width": (1, math.inf, False),
    "depth": (1, math.inf, False),
}

# recipe step kind -> its fields a population call can vary, by the population's name for them
RECIPE_FIELDS = {
    "train": {"learning_rate": "learning_rate", "weight_decay": "weight_decay", "label_smoothing": "label_smoothing",
              "batch_size": "batch_size", "warmup_steps": "warmup_steps", "mixup": "mixup"},
    "prune": {"sparsity": "sparsity"},
    "quantize": {"bits": "bits"},
    "distill": {"temperature": "temperature", "alpha": "alpha"},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched name: a range (``low``, ``high``, ``log``, ``step``) or ``choices``.

    Examples:
      >>> Dimension("learning_rate", low=1e-4, high=1e-1, log=True).integer
      False
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    @property
    def integer(self) -> bool:
        """Whether the name takes integers (``bits``, ``batch_size``, ``width``, ``depth``, ...)."""
        return self.name in INTEGER

    def to_dict(self) -> dict:
        """The TOML table of this dimension."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def _in_limits(name: str, value) -> bool:
    if name in CHOICES:
        return isinstance(value, str) and value in CHOICES[name]
    low, high, closed = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if name in INTEGER and value != int(value):
        return False
    return low <= value and (value <= high if closed else value < high)


def _limits_text(name: str) -> str:
    if name in CHOICES:
        return f"one of {CHOICES[name]}"
    low, high, closed = LIMITS[name]
    kind = "an integer" if name in INTEGER else "a number"
    if high == math.inf:
        return f"{kind} >= {low}"
    return f"{kind} in [{low}, {high}{']' if closed else ')'}"


def _dimension(where: str, name: str, spec: Mapping) -> Dimension:
    keys = set(spec)
    if "choices" in keys:
        choices = spec["choices"]
        if keys != {"choices"} or isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
            raise ValueError(f"{where}: {name} must be {{choices = [...]}} with a non-empty list, got {dict(spec)!r}")
        bad = [c for c in choices if not _in_limits(name, c)]
        if bad:
            raise ValueError(f"{where}: {name} choices must each be {_limits_text(name)}, got {bad!r}")
        if len(set(choices)) != len(choices):
            raise ValueError(f"{where}: {name} choices repeat a value: {list(choices)!r}")
        return Dimension(name, choices=tuple(int(c) if name in INTEGER else c for c in choices))
    if name in CHOICES:
        raise ValueError(f"{where}: {name} takes {{choices = [...]}} of {CHOICES[name]}, got {dict(spec)!r}")
    if not {"low", "high"} <= keys or keys - {"low", "high", "log", "step"}:
        raise ValueError(f"{where}: {name} needs low and high (optional log, step) or choices, got keys {sorted(keys)}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for arg, value in (("low", low), ("high", high)):
        if not _in_limits(name, value):
            raise ValueError(f"{where}: {name}.{arg} must be {_limits_text(name)}, got {value!r}")
    if not low < high:
        raise ValueError(f"{where}: {name} needs low < high, got low={low!r} high={high!r}")
    if not isinstance(log, bool):
        raise ValueError(f"{where}: {name}.log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: {name} on a log scale needs low > 0, got {low!r}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or not step > 0 or log:
            raise ValueError(f"{where}: {name}.step must be a number > 0 without log, got {step!r}")
        if name in INTEGER and step != int(step):
            raise ValueError(f"{where}: {name}.step must be an integer, got {step!r}")
    if name in INTEGER:
        low, high, step = int(low), int(high), None if step is None else int(step)
    return Dimension(name, float(low) if name not in INTEGER else low, high if name in INTEGER else float(high),
                     log, step)  # fmt: skip


class Space:
    """The names a study searches and the values it keeps fixed.

    Args:
      spec: ``name -> table``: ``{low, high[, log, step]}`` or ``{choices = [...]}``
        for a searched name, or a plain number for a fixed one. Names from
        :data:`SEARCHABLE`.
      targets: for a space read from a recipe, ``name -> (step index, field)``
        (set by :meth:`from_recipe`).
      recipe: the :class:`hamjax.recipes.Recipe` it came from, or ``None``.

    Raises:
      ValueError: an empty space, an unknown or unsearchable name, or a table
        that is inconsistent (``low >= high``, log with ``low <= 0``, a value
        outside the name's range, repeated or empty choices).

    Examples:
      >>> space = Space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
      ...                "label_smoothing": {"low": 0.0, "high": 0.2}, "batch_size": {"choices": [64, 128]}})
      >>> space.traced, space.bucketed
      (('learning_rate', 'label_smoothing'), ('batch_size',))
      >>> space.hparams([{"learning_rate": 0.01, "label_smoothing": 0.1, "batch_size": 64}])["learning_rate"].shape
      (1,)
    """

    def __init__(self, spec: Mapping[str, Any], *, targets: Mapping | None = None, recipe=None):
        where = "Space"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: spec must be a table of names, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(SEARCHABLE))
        if unknown:
            raise ValueError(
                f"{where}: {unknown} cannot be searched in one population call; searchable names: {SEARCHABLE}"
            )
        dims, fixed = {}, {}
        for name in SEARCHABLE:  # a fixed order: trials ask names in it
            if name not in spec:
                continue
            value = spec[name]
            if isinstance(value, Mapping):
                dims[name] = _dimension(where, name, value)
            elif _in_limits(name, value):
                fixed[name] = value if name in CHOICES else int(value) if name in INTEGER else float(value)
            else:
                raise ValueError(f"{where}: {name} must be a table or {_limits_text(name)}, got {value!r}")
        if not dims:
            raise ValueError(f"{where}: the space searches nothing; give at least one range or choices table")
        self.dimensions: dict[str, Dimension] = dims
        self.fixed: dict[str, float | int] = fixed
        self.targets = dict(targets or {})
        self.recipe = recipe

    @classmethod
    def from_recipe(cls, recipe) -> Space:
        """The space of a recipe's ``[steps.search]`` tables.

        Args:
          recipe: a :class:`hamjax.recipes.Recipe`, or a bundled name or path for :func:`hamjax.recipes.load`.

        Returns:
          A :class:`Space` whose :attr:`targets` say which step field each name fills;
          a train step that warms up (searched, or a fixed ``warmup_steps`` > 0)
          also fixes ``schedule = "cosine"``, as the recipe's train step decays.

        Raises:
          ValueError: a searched field one population call cannot vary (a
            student's size, a finetuning rate), or one name searched in two
            steps.

        Examples:
          >>> from hamjax import recipes
          >>> r = recipes.validate({"name": "r", "steps": [
          ...     {"kind": "train", "search": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}},
          ...     {"kind": "prune", "search": {"sparsity": {"low": 0.3, "high": 0.9}}}]})
          >>> Space.from_recipe(r).targets
          {'learning_rate': (0, 'learning_rate'), 'sparsity': (1, 'sparsity')}
        """
        from hamjax import recipes

        if not isinstance(recipe, recipes.Recipe):
            recipe = recipes.load(recipe)
        spec, targets = {}, {}
        for index, step in enumerate(recipe.steps):
            allowed = RECIPE_FIELDS.get(step.kind, {})
            for field, table in step.search.items():
                where = f"steps[{index}].search.{field}"
                if field not in allowed:
                    raise ValueError(
                        f"Space.from_recipe: {where} ({step.kind}) cannot be searched in one population call; "
                        f"searchable: {sorted(f'{k}.{f}' for k, fs in RECIPE_FIELDS.items() for f in fs)}"
                    )
                name = allowed[field]
                if step.kind == "train" and step.params.get("optimizer") not in ("adam", "adamw"):
                    raise ValueError(
                        f"Space.from_recipe: {where}: the step trains with {step.params['optimizer']!r}; "
                        "a population trains AdamW, so only an adam or adamw train step can be searched"
                    )
                if name in targets:
                    raise ValueError(
                        f"Space.from_recipe: {where} searches {name!r}, already searched by "
                        f"steps[{targets[name][0]}]; one population call trains one {name} per member"
                    )
                spec[name], targets[name] = dict(table), (index, field)
        # The recipe's own values of what it does not search (a distillation's needs a teacher: left out).
        for step in recipe.steps:
            for field, name in RECIPE_FIELDS.get(step.kind, {}).items():
                value = step.params.get(field)
                off = name in ("warmup_steps", "mixup") and value == 0  # the defaults: nothing to trace
                if name not in spec and name not in ("temperature", "alpha") and value is not None and not off:
                    spec[name] = value
        if "warmup_steps" in spec:  # a recipe's train step warms up, then decays by cosine
            spec.setdefault("schedule", "cosine")
        if not targets:
            raise ValueError(f"Space.from_recipe: recipe {recipe.name!r} has no [steps.search] table")
        return cls(spec, targets=targets, recipe=recipe)

    @property
    def names(self) -> tuple[str, ...]:
        """The searched names, in :data:`SEARCHABLE` order."""
        return tuple(self.dimensions)

    @property
    def traced(self) -> tuple[str, ...]:
        """The searched names that are per-member arrays of one compiled call."""
        return tuple(n for n in self.dimensions if n in TRACED)

    @property
    def bucketed(self) -> tuple[str, ...]:
        """The searched names that change shapes: trials of one value train together."""
        return tuple(n for n in self.dimensions if n in BUCKETED)

    def __repr__(self) -> str:
        return f"Space({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict:
        """The TOML/JSON form: ``Space(space.to_dict())`` is an equal space (recipe targets aside)."""
        return {**{n: d.to_dict() for n, d in self.dimensions.items()}, **self.fixed}

    def distributions(self) -> dict:
        """The Optuna distributions, by name (Optuna imported here)."""
        import optuna

        out = {}
        for name, d in self.dimensions.items():
            if d.choices is not None:
                out[name] = optuna.distributions.CategoricalDistribution(list(d.choices))
            elif d.integer:
                out[name] = optuna.distributions.IntDistribution(d.low, d.high, log=d.log, step=d.step or 1)
            else:
                out[name] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log, step=d.step)
        return out

    def grid(self) -> dict[str, list]:
        """Every name's values for a grid sampler: its choices, or its range by ``step`` (integers: step 1).

        Raises:
          ValueError: a float range without ``step`` (a grid needs finite values).
        """
        out = {}
        for name, d in self.dimensions.items():
            if d.choices is not None:
                out[name] = list(d.choices)
            elif d.integer:
                out[name] = list(range(d.low, d.high + 1, d.step or 1))
            elif d.step is not None:
                count = math.floor((d.high - d.low) / d.step + 1e-9) + 1
                out[name] = [float(round(d.low + i * d.step, 12)) for i in range(count)]
            else:
                raise ValueError(f"grid sampler: {name} needs choices or a step, got {d.to_dict()!r}")
        return out

    def narrowed(self, points: Sequence[Mapping], *, margin: float = 0.1) -> Space:
        """The space around ``points`` (the best trials' params): what they span, widened by ``margin``.

        A range becomes ``[min, max]`` of the points, widened on each side by
        ``margin`` of that span (on a log scale for log ranges) and kept
        within the old range; choices keep the values the points took. A
        name the points leave without room (one value on a range) keeps its range.

        Args:
          points: the params of the trials to narrow around (two or more).
          margin: the widening, a fraction of the span.

        Returns:
          A :class:`Space` with the same names, fixed values and targets.

        Examples:
          >>> space = Space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "bits": {"choices": [4, 6, 8]}})
          >>> narrow = space.narrowed([{"learning_rate": 1e-3, "bits": 8}, {"learning_rate": 1e-2, "bits": 6}])
          >>> narrow.dimensions["bits"].choices, [round(v, 5) for v in narrow.to_dict()["learning_rate"].values()][:2]
          ((6, 8), [0.00079, 0.01259])
        """
        if len(points) < 2:
            raise ValueError(f"Space.narrowed: needs two or more points, got {len(points)}")
        spec = dict(self.fixed)
        for name, d in self.dimensions.items():
            taken = [p[name] for p in points]
            if d.choices is not None:
                spec[name] = {"choices": [c for c in d.choices if c in taken]}
                continue
            scale = (np.log, np.exp) if d.log else (lambda v: v, lambda v: v)
            low, high = scale[0](min(taken)), scale[0](max(taken))
            pad = margin * (high - low)
            low, high = float(max(scale[1](low - pad), d.low)), float(min(scale[1](high + pad), d.high))
            if d.step is not None:  # whole steps from the old low
                low = d.low + math.floor((low - d.low) / d.step + 1e-9) * d.step
                high = min(d.low + math.ceil((high - d.low) / d.step - 1e-9) * d.step, d.high)
            if d.integer:
                low, high = math.floor(low), math.ceil(high)
            spec[name] = {**d.to_dict(), "low": low, "high": high} if low < high else d.to_dict()
        return Space(spec, targets=self.targets, recipe=self.recipe)

    def values(self, params: Mapping) -> dict:
        """A trial's full values: its sampled ``params`` and the fixed ones."""
        return {**self.fixed, **{n: params[n] for n in self.dimensions}}

    def bucket(self, params: Mapping) -> tuple:
        """The shape bucket of a trial: its bucketed values (fixed ones included), in order."""
        values = self.values(params)
        return tuple((n, values[n]) for n in BUCKETED if n in values)

    def hparams(self, members: Sequence[Mapping], *, steps: Callable[[Mapping], int] | None = None) -> dict:
        """``name -> (P,)`` float32 arrays of the traced names (searched and fixed) of ``members`` (one bucket).

        With ``steps`` (a member's values -> its optimizer steps), cosine-schedule
        members also get ``decay_steps``: their learning rate decays to 0 by then.
        """
        rows = [self.values(m) for m in members]
        names = [n for n in TRACED if n in (rows[0] if rows else {})]
        out = {n: np.asarray([r[n] for r in rows], np.float32) for n in names}
        if steps is not None and rows and rows[0].get("schedule") == "cosine":
            out["decay_steps"] = np.asarray([steps(r) for r in rows], np.float32)
        return out
