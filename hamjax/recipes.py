"""Recipes: named, ordered chains of steps, stored as TOML in ``transforms/``.

A recipe file looks like this::

    name = "baseline"
    description = "Train the model; no compression."

    [[steps]]
    kind = "train"
    epochs = 15
    learning_rate = 1e-3

    [steps.search]                       # optional: what a search may vary
    learning_rate = { low = 1e-4, high = 1e-2, log = true }

Every step kind declares its fields (type, default, bounds); loading
validates every field and names the bad one. The CLI, the autotuner and the
searches read and write this one format, so a search's winner can be saved,
shared and re-run.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

RECIPE_SUFFIX = ".toml"
_TOP_KEYS = {"name", "description", "steps"}


class RecipeError(ValueError):
    """A recipe file or dict that does not validate; the message names the field."""


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
    """

    type: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple | None = None
    doc: str = ""


REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class StepKind:
    """A registered step kind: its fields and the function that runs it."""

    name: str
    fields: Mapping[str, Field]
    run: Callable[[dict, Context], Context]
    doc: str = ""
    check: Callable[[dict], str | None] | None = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One validated step: its kind, its complete field values and its search space."""

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
        """The TOML-ready dict form; :func:`validate` of it gives back an equal recipe."""
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
      workdir: a directory for checkpoints, or ``None``.
      progress: show progress bars.
      config: the reference model's config (from
        :func:`hamjax.models.config_of`) when the model is one; steps that
        need the architecture (structured pruning, shrink) require it.
      extras: anything a step leaves for later steps (for example pruning
        masks), keyed by name.
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


_STEP_KINDS: dict[str, StepKind] = {}


def register_step(
    name: str,
    fields: Mapping[str, Field],
    run: Callable[[dict, Context], Context],
    doc: str = "",
    check: Callable[[dict], str | None] | None = None,
):
    """Register a step kind so recipes can use it.

    Args:
      name: the ``kind`` that recipes write.
      fields: the step's fields.
      run: ``run(params, context) -> context``.
      doc: a one-line description.
      check: ``check(params) -> message or None`` for rules across fields
        (``n <= m``); a message fails validation.

    Raises:
      ValueError: if ``name`` is already registered.
    """
    if name in _STEP_KINDS:
        raise ValueError(f"register_step: step kind {name!r} is already registered")
    _STEP_KINDS[name] = StepKind(name, dict(fields), run, doc, check)


def step_kinds() -> dict[str, StepKind]:
    """The registered step kinds by name."""
    return dict(_STEP_KINDS)


def _check_value(where: str, field: Field, value):
    if field.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (field.type is not bool and isinstance(value, bool)) or not isinstance(value, field.type):
        raise RecipeError(f"{where} must be {field.type.__name__}, got {value!r} ({type(value).__name__})")
    if field.type in (int, float) and value != value:
        raise RecipeError(f"{where} must be a number, got {value!r}")
    if field.above is not None and not value > field.above:
        raise RecipeError(f"{where} must be > {field.above}, got {value!r}")
    if field.low is not None and value < field.low:
        raise RecipeError(f"{where} must be >= {field.low}, got {value!r}")
    if field.high is not None and value > field.high:
        raise RecipeError(f"{where} must be <= {field.high}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        raise RecipeError(f"{where} must be one of {list(field.choices)}, got {value!r}")
    return value


def _check_search(where: str, name: str, field: Field, space) -> dict:
    if not isinstance(space, Mapping):
        raise RecipeError(f"{where}.search.{name} must be a table, got {space!r}")
    space = dict(space)
    if "choices" in space:
        extra = set(space) - {"choices"}
        choices = space["choices"]
        if extra or not isinstance(choices, list) or not choices:
            raise RecipeError(f"{where}.search.{name} must be {{choices = [...]}} with a non-empty list, got {space!r}")
        space["choices"] = [_check_value(f"{where}.search.{name}.choices", field, c) for c in choices]
        return space
    if field.type not in (int, float):
        raise RecipeError(f"{where}.search.{name}: a {field.type.__name__} field is searched with choices = [...]")
    allowed = {"low", "high", "log", "step"}
    if set(space) - allowed or not {"low", "high"} <= set(space):
        raise RecipeError(f"{where}.search.{name} needs low and high (optional log, step), got keys {sorted(space)}")
    low = _check_value(f"{where}.search.{name}.low", field, space["low"])
    high = _check_value(f"{where}.search.{name}.high", field, space["high"])
    if not low < high:
        raise RecipeError(f"{where}.search.{name}: low must be < high, got low={low!r} high={high!r}")
    if space.get("log") and low <= 0:
        raise RecipeError(f"{where}.search.{name}: log scale needs low > 0, got {low!r}")
    if not isinstance(space.get("log", False), bool):
        raise RecipeError(f"{where}.search.{name}.log must be true or false, got {space['log']!r}")
    return {**space, "low": low, "high": high}


def validate(raw: Mapping) -> Recipe:
    """Validate a recipe dict (as parsed from TOML) and fill in defaults.

    Args:
      raw: the recipe as a dict.

    Returns:
      A :class:`Recipe`.

    Raises:
      RecipeError: naming the first bad field, its value and what was expected.

    Examples:
      >>> from hamjax import recipes
      >>> r = recipes.validate({"name": "x", "steps": [{"kind": "train", "epochs": 2}]})
      >>> r.steps[0].params["epochs"], r.steps[0].params["batch_size"]
      (2, 128)
    """
    if not isinstance(raw, Mapping):
        raise RecipeError(f"a recipe must be a table, got {type(raw).__name__}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise RecipeError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecipeError(f"recipe.name must be a non-empty string, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RecipeError(f"recipe.description must be a string, got {description!r}")
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RecipeError(f"recipe.steps must be a non-empty list of tables ([[steps]]), got {raw_steps!r}")
    steps = []
    for i, raw_step in enumerate(raw_steps):
        where = f"steps[{i}]"
        if not isinstance(raw_step, Mapping):
            raise RecipeError(f"{where} must be a table, got {raw_step!r}")
        kind = raw_step.get("kind")
        if kind not in _STEP_KINDS:
            raise RecipeError(f"{where}.kind must be one of {sorted(_STEP_KINDS)}, got {kind!r}")
        fields = _STEP_KINDS[kind].fields
        extra = set(raw_step) - set(fields) - {"kind", "search"}
        if extra:
            raise RecipeError(f"{where}: unknown field(s) {sorted(extra)} for kind {kind!r}; allowed: {sorted(fields)}")
        params = {}
        for fname, field in fields.items():
            if fname in raw_step:
                params[fname] = _check_value(f"{where}.{fname}", field, raw_step[fname])
            elif field.default is REQUIRED:
                raise RecipeError(f"{where}.{fname} is required for kind {kind!r}")
            else:
                params[fname] = field.default
        problem = _STEP_KINDS[kind].check(params) if _STEP_KINDS[kind].check else None
        if problem:
            raise RecipeError(f"{where}: {problem}")
        raw_search = raw_step.get("search", {})
        if not isinstance(raw_search, Mapping):
            raise RecipeError(f"{where}.search must be a table, got {raw_search!r}")
        search = {}
        for fname, space in raw_search.items():
            if fname not in fields:
                raise RecipeError(f"{where}.search.{fname}: no such field for kind {kind!r}; allowed: {sorted(fields)}")
            search[fname] = _check_search(where, fname, fields[fname], space)
        steps.append(Step(kind, params, search))
    return Recipe(name.strip(), description, tuple(steps))


def _bundled_dir() -> Path:
    """The recipes shipped in the wheel, or the source checkout's ``transforms/``."""
    packaged = resources.files("hamjax") / "transforms"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "transforms"


def available() -> list[str]:
    """Names of the bundled recipes."""
    folder = _bundled_dir()
    return sorted(p.stem for p in folder.glob(f"*{RECIPE_SUFFIX}")) if folder.is_dir() else []


def load(name_or_path: str | os.PathLike) -> Recipe:
    """Load and validate a recipe by bundled name or by file path.

    Args:
      name_or_path: a bundled recipe's name (``"baseline"``) or a path to a
        ``.toml`` file.

    Returns:
      A :class:`Recipe`.

    Raises:
      RecipeError: for an unknown name, unreadable TOML or a bad field; the
        message names the file and the field.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    if not (text.endswith(RECIPE_SUFFIX) or os.sep in text or path.exists()):
        path = _bundled_dir() / f"{text}{RECIPE_SUFFIX}"
        if not path.is_file():
            raise RecipeError(f"unknown recipe {text!r}; bundled recipes: {available()} (or pass a .toml path)")
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from err
    try:
        return validate(raw)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def dumps(recipe: Recipe) -> str:
    """The TOML text of ``recipe``."""
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())


def save(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write ``recipe`` as TOML, atomically (write a temporary file, then rename).

    Returns:
      The path written.
    """
    path = Path(path)
    if path.suffix != RECIPE_SUFFIX:
        raise RecipeError(f"save: recipe path must end in {RECIPE_SUFFIX}, got {str(path)!r}")
    validate(recipe.to_dict())
    from hamjax import checkpoint

    checkpoint.atomic_write(path, dumps(recipe))
    return path


def run(recipe: Recipe, context: Context) -> Context:
    """Run every step of ``recipe`` in order on ``context``.

    Args:
      recipe: a validated :class:`Recipe`.
      context: the starting :class:`Context` (the untrained or pretrained model).

    Returns:
      The final :class:`Context`; ``context.stages`` lists what each step produced.
    """
    for step in recipe.steps:
        context = _STEP_KINDS[step.kind].run(dict(step.params), context)
    return context


# The built-in step kinds register themselves on import; they need the names above.
from hamjax import recipe_distill, recipe_export, recipe_precision, recipe_quant, recipe_steps  # noqa: E402, F401
