"""What a recipe is made of: fields, step kinds, steps, recipes and the context steps pass along.

This module is the bottom of :mod:`hamjax.recipes`: from the rest of hamjax
it imports only :func:`hamjax.checkpoint.check_inside`, so the step modules
(which import the families) and the registry (which imports the steps) both
build on it without a circle.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from hamjax.checkpoint import check_inside

__all__ = ["REQUIRED", "Context", "Field", "Recipe", "RecipeError", "Step", "StepKind", "check_slug"]


class RecipeError(ValueError):
    """A recipe file or dict that does not validate, or a step that cannot run; the message names the field.

    Examples:
      >>> from hamjax.recipes import RecipeError
      >>> issubclass(RecipeError, ValueError)
      True
    """


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
"""The default of a :class:`Field` that a recipe must give."""

_SLUG = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9 ._+-]{0,99}")


def check_slug(where: str, value: str) -> str:
    """``value`` if it is safe as one path component, else raises.

    A slug is 1 to 100 ASCII letters, digits, spaces, ``.``, ``_``, ``-`` and
    ``+``, not starting with a dot or a space and without ``..``: a stage name
    goes into a checkpoint directory's name, so none may climb out of the
    work directory (``../x``) or hide there (``.x``).

    Args:
      where: the value's place (``"steps[0].stage"``), the start of the message.
      value: the name to check.

    Raises:
      RecipeError: naming ``where``, the value and what is allowed.

    Examples:
      >>> from hamjax.recipes.schema import check_slug
      >>> check_slug("steps[0].stage", "int8 qat")
      'int8 qat'
      >>> check_slug("steps[0].stage", "../x")
      Traceback (most recent call last):
      ...
      hamjax.recipes.schema.RecipeError: steps[0].stage must be a name of letters, digits, spaces, '.', '_', '-' and '+' (not starting with '.' or a space, no '..', at most 100 characters), got '../x'
    """
    if not isinstance(value, str) or not _SLUG.fullmatch(value) or ".." in value:
        raise RecipeError(
            f"{where} must be a name of letters, digits, spaces, '.', '_', '-' and '+' (not starting with '.' or a space,"
            f" no '..', at most 100 characters), got {value!r}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a step kind.

    Attributes:
      type: ``int``, ``float``, ``str`` or ``bool``.
      default: the value when the field is absent (``None`` means optional
        with no value; ``REQUIRED`` means it must be given).
      low, high: inclusive bounds for numbers.
      above: an exclusive lower bound for numbers.
      choices: allowed values for strings.
      doc: one line shown by ``hamjax recipes --fields``.
      slug: a string that must be safe as a path component
        (:func:`check_slug`); every step kind's ``stage`` field is one.

    Examples:
      >>> from hamjax.recipes import Field
      >>> Field(int, 10, low=1).check("steps[0].epochs", 3)
      3
      >>> Field(float, 0.5, high=1.0).check("steps[0].sparsity", 1)
      1.0
    """

    type: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple | None = None
    doc: str = ""
    slug: bool = False

    def check(self, where: str, value):
        """``value`` if it fits this field (an int becomes a float for a float field), else raises.

        Args:
          where: the field's place in the recipe (``"steps[0].epochs"``), the start of the message.
          value: the value the recipe gives.

        Raises:
          RecipeError: naming ``where``, the value and what was expected.
        """
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (self.type is not bool and isinstance(value, bool)) or not isinstance(value, self.type):
            raise RecipeError(f"{where} must be {self.type.__name__}, got {value!r} ({type(value).__name__})")
        if self.type is float and not math.isfinite(value):
            raise RecipeError(f"{where} must be a finite number, got {value!r}")
        if self.above is not None and not value > self.above:
            raise RecipeError(f"{where} must be > {self.above}, got {value!r}")
        if self.low is not None and value < self.low:
            raise RecipeError(f"{where} must be >= {self.low}, got {value!r}")
        if self.high is not None and value > self.high:
            raise RecipeError(f"{where} must be <= {self.high}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise RecipeError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.slug:
            check_slug(where, value)
        return value

    def accepts(self, value) -> bool:
        """Whether :meth:`check` takes ``value``.

        Examples:
          >>> from hamjax.recipes import Field
          >>> Field(str, choices=("a", "b")).accepts("c")
          False
        """
        try:
            self.check("", value)
        except RecipeError:
            return False
        return True

    def check_search(self, where: str, space) -> dict:
        """A search space over this field, ``{low, high[, log, step]}`` or ``{choices = [...]}``, checked.

        Args:
          where: the space's place in the recipe (``"steps[0].search.learning_rate"``).
          space: the table the recipe gives.

        Returns:
          The space with its bounds and choices checked against the field.

        Raises:
          RecipeError: naming ``where`` and what is wrong.

        Examples:
          >>> from hamjax.recipes import Field
          >>> Field(float, 1e-3, above=0.0).check_search("lr", {"low": 1e-4, "high": 1e-2, "log": True})["high"]
          0.01
        """
        if not isinstance(space, Mapping):
            raise RecipeError(f"{where} must be a table, got {space!r}")
        space = dict(space)
        if "choices" in space:
            choices = space["choices"]
            if set(space) - {"choices"} or not isinstance(choices, list) or not choices:
                raise RecipeError(f"{where} must be {{choices = [...]}} with a non-empty list, got {space!r}")
            space["choices"] = [self.check(f"{where}.choices", c) for c in choices]
            return space
        if self.type not in (int, float):
            raise RecipeError(f"{where}: a {self.type.__name__} field is searched with choices = [...]")
        if set(space) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(space):
            raise RecipeError(f"{where} needs low and high (optional log, step), got keys {sorted(space)}")
        low = self.check(f"{where}.low", space["low"])
        high = self.check(f"{where}.high", space["high"])
        if not low < high:
            raise RecipeError(f"{where}: low must be < high, got low={low!r} high={high!r}")
        if space.get("log") and low <= 0:
            raise RecipeError(f"{where}: log scale needs low > 0, got {low!r}")
        if not isinstance(space.get("log", False), bool):
            raise RecipeError(f"{where}.log must be true or false, got {space['log']!r}")
        return {**space, "low": low, "high": high}


@dataclasses.dataclass(frozen=True)
class StepKind:
    """A step kind: its fields and the function that runs it.

    Attributes:
      name: the ``kind`` recipes write.
      fields: the step's fields by name.
      run: ``run(fields, context) -> context``.
      doc: a one-line description.
      check: ``check(fields) -> message or None`` for rules across fields
        (``n <= m``); a message fails validation.
      renamed: former field names and their new names; a recipe that still
        writes the old one is refused with a message that gives the new one.
        An old name that a new field took over (the quantize step's
        ``method``) is caught when its value fits the new name's field only.
      reference: ``reference(fields) -> description or None``: the fields
        that make this step need a hamjax reference model's config (a
        structured prune, a student built from the config), for example
        ``"method='neurons', shrink=true"``; ``None`` when it runs on any model.

    A string field named ``stage`` names the step's report row and its
    checkpoint directory, so it is always a slug (:func:`check_slug`),
    whatever the kind's author declared.

    Examples:
      >>> from hamjax.recipes import Field, StepKind
      >>> kind = StepKind("noop", {"times": Field(int, 1, low=1)}, lambda fields, context: context)
      >>> kind.fields["times"].default
      1
    """

    name: str
    fields: Mapping[str, Field]
    run: Callable[[dict, Context], Context]
    doc: str = ""
    check: Callable[[dict], str | None] | None = None
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reference: Callable[[dict], str | None] | None = None

    def __post_init__(self):
        stage = self.fields.get("stage")
        if stage is not None and stage.type is str and not stage.slug:
            fields = {**self.fields, "stage": dataclasses.replace(stage, slug=True)}
            object.__setattr__(self, "fields", fields)


@dataclasses.dataclass(frozen=True)
class Step:
    """One validated step: its kind, its complete field values and its search space.

    Examples:
      >>> from hamjax.recipes import Step
      >>> Step("train", {"epochs": 2}).search
      {}
    """

    kind: str
    params: Mapping[str, Any]
    search: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe.

    Examples:
      >>> import hamjax
      >>> r = hamjax.recipes.load("baseline")
      >>> r.steps[0].kind
      'train'
    """

    name: str
    description: str
    steps: tuple[Step, ...]

    def to_dict(self) -> dict:
        """The TOML-ready dict form; :func:`hamjax.recipes.validate` of it gives back an equal recipe."""
        steps = []
        for step in self.steps:
            entry = {"kind": step.kind, **{k: v for k, v in step.params.items() if v is not None}}
            if step.search:
                entry["search"] = {k: dict(v) for k, v in step.search.items()}
            steps.append(entry)
        return {"name": self.name, "description": self.description, "steps": steps}


@dataclasses.dataclass
class Context:
    """What steps pass along: the current model, the data and the stages so far.

    Attributes:
      apply_fn, params: the current model.
      dataset: a :class:`hamjax.data.Dataset`.
      seed: the run's seed.
      stages: a :class:`hamjax.report.Stage` for each model worth
        measuring, in order; steps append to it.
      workdir: a directory for checkpoints and exported files, or ``None``.
      progress: show progress bars.
      config: the reference model's config (from
        :func:`hamjax.models.config_of`) when the model is one; steps that
        need the architecture (structured pruning, shrink, distillation into
        a student) require it.
      extras: anything a step leaves for later steps or the caller, keyed by
        name: ``"dense"`` (the first trained model as ``(apply_fn, params,
        config)``),
        ``"quantized"`` (``(qapply, qparams)``), ``"onnx int8"`` (the export
        result).
      resumed: ``stage -> step`` for each stage whose training resumed
        from a checkpoint (:meth:`note_resumed`).

    Examples:
      >>> from hamjax.recipes import Context
      >>> Context(lambda p, x: x, {}, dataset=None, workdir="run").checkpoint_dir("dense")
      'run/checkpoints-0-dense'
    """

    apply_fn: Any
    params: Any
    dataset: Any
    seed: int = 0
    stages: list = dataclasses.field(default_factory=list)
    workdir: str | None = None
    progress: bool = True
    config: Any = None
    extras: dict = dataclasses.field(default_factory=dict)
    resumed: dict = dataclasses.field(default_factory=dict)

    def path(self, name: str, what: str) -> str | None:
        """``workdir/name``, checked to stay inside ``workdir`` through symbolic links, or ``None`` without a workdir.

        Every file or folder a step writes under ``workdir`` is named here.

        Args:
          name: the file or folder's name inside ``workdir``.
          what: what goes there, for the error.

        Returns:
          The path, or ``None``.

        Raises:
          RecipeError: a path that resolves outside ``workdir`` (through a
            symbolic link) or to ``workdir`` itself.

        Examples:
          >>> from hamjax.recipes import Context
          >>> Context(lambda p, x: x, {}, dataset=None, workdir="run").path("export", "the ONNX files")
          'run/export'
        """
        if self.workdir is None:
            return None
        path = os.path.join(self.workdir, name)
        try:
            return check_inside("recipes.run", what, self.workdir, path)
        except ValueError as err:
            raise RecipeError(str(err)) from None

    def checkpoint_dir(self, stage: str) -> str | None:
        """Where a step that trains keeps its checkpoints: one directory per step under ``workdir``.

        Args:
          stage: the name of the row the step adds.

        Returns:
          ``workdir/checkpoints-<row index>-<stage>``, or ``None`` without a workdir.

        Raises:
          RecipeError: for a ``stage`` that is not a slug (:func:`check_slug`)
            or a directory that resolves outside ``workdir`` (through a
            symbolic link).
        """
        check_slug("checkpoint_dir: stage", stage)
        return self.path(f"checkpoints-{len(self.stages)}-{stage}", f"the checkpoints of stage {stage!r}")

    def note_resumed(self, stage: str, result: Any) -> None:
        """Record that ``stage`` resumed from a checkpoint: ``result.resumed_from`` (a :class:`hamjax.train.TrainResult`).

        Args:
          stage: the row's name.
          result: what the step's training returned; nothing is recorded
            when its ``resumed_from`` is ``None`` (a fresh run).
        """
        step = getattr(result, "resumed_from", None)
        if step is not None:
            self.resumed[stage] = int(step)
