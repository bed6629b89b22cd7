"""The step kinds a recipe may use, and the functions that check and run recipes against them.

The built-in kinds are :data:`hamjax.recipes.steps.BUILTIN`; third-party
kinds join through :func:`register_step` into a table of their own beside
it. Nothing registers itself on import: this module imports the steps, the
steps import the families and :mod:`hamjax.recipes.schema`, and no import
points back up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from hamjax.recipes.schema import REQUIRED, Context, Field, Recipe, RecipeError, Step, StepKind
from hamjax.recipes.steps import BUILTIN

__all__ = ["reference_steps", "register_step", "run", "step_kinds", "validate"]

_TOP_KEYS = {"name", "description", "steps"}
_EXTRA: dict[str, StepKind] = {}


def register_step(
    name: str,
    fields: Mapping[str, Field],
    run: Callable[[dict, Context], Context],
    doc: str = "",
    check: Callable[[dict], str | None] | None = None,
    *,
    reference: Callable[[dict], str | None] | None = None,
) -> StepKind:
    """Register a third-party step kind so recipes can use it.

    Args:
      name: the ``kind`` that recipes write.
      fields: the step's fields.
      run: ``run(fields, context) -> context``.
      doc: a one-line description.
      check: ``check(fields) -> message or None`` for rules across fields
        (``n <= m``); a message fails validation.
      reference: ``reference(fields) -> description or None``, for a step
        that needs a hamjax reference model (see :class:`StepKind`).

    Returns:
      The registered :class:`StepKind`.

    Raises:
      ValueError: if ``name`` is a built-in kind or already registered.

    Examples:
      >>> from hamjax import recipes
      >>> kind = recipes.register_step("noop-doc", {}, lambda fields, context: context, doc="does nothing")
      >>> recipes.validate({"name": "r", "steps": [{"kind": "noop-doc"}]}).steps[0].kind
      'noop-doc'
    """
    if name in BUILTIN or name in _EXTRA:
        raise ValueError(f"register_step: step kind {name!r} is already registered")
    kind = StepKind(name, dict(fields), run, doc, check, reference=reference)
    _EXTRA[name] = kind
    return kind


def step_kinds() -> dict[str, StepKind]:
    """The step kinds recipes may use by name: the built-in ones, then the registered ones.

    Examples:
      >>> from hamjax import recipes
      >>> list(recipes.step_kinds())[:3]
      ['train', 'prune', 'distill']
    """
    return {**BUILTIN, **_EXTRA}


def _renamed(where: str, kind: StepKind, raw_step: Mapping) -> None:
    """Refuse a field that the step kind has renamed, naming its new name."""
    for old, new in kind.renamed.items():
        if old not in raw_step:
            continue
        value = raw_step[old]
        if old in kind.fields and (kind.fields[old].accepts(value) or not kind.fields[new].accepts(value)):
            continue  # the old name is a field of its own now, and the value is meant for it
        also = f"; the former {new} field is now {kind.renamed[new]}" if new in kind.renamed else ""
        raise RecipeError(f"{where}.{old} = {value!r}: this field of {kind.name!r} is now called {new}{also}")


def _step(where: str, raw_step, kinds: Mapping[str, StepKind]) -> Step:
    if not isinstance(raw_step, Mapping):
        raise RecipeError(f"{where} must be a table, got {raw_step!r}")
    name = raw_step.get("kind")
    if name not in kinds:
        raise RecipeError(f"{where}.kind must be one of {sorted(kinds)}, got {name!r}")
    kind = kinds[name]
    _renamed(where, kind, raw_step)
    extra = set(raw_step) - set(kind.fields) - {"kind", "search"}
    if extra:
        raise RecipeError(
            f"{where}: unknown field(s) {sorted(extra)} for kind {name!r}; allowed: {sorted(kind.fields)}"
        )
    params = {}
    for fname, field in kind.fields.items():
        if fname in raw_step:
            params[fname] = field.check(f"{where}.{fname}", raw_step[fname])
        elif field.default is REQUIRED:
            raise RecipeError(f"{where}.{fname} is required for kind {name!r}")
        else:
            params[fname] = field.default
    problem = kind.check(params) if kind.check else None
    if problem:
        raise RecipeError(f"{where}: {problem}")
    raw_search = raw_step.get("search", {})
    if not isinstance(raw_search, Mapping):
        raise RecipeError(f"{where}.search must be a table, got {raw_search!r}")
    search = {}
    for fname, space in raw_search.items():
        if fname not in kind.fields:
            raise RecipeError(
                f"{where}.search.{fname}: no such field for kind {name!r}; allowed: {sorted(kind.fields)}"
            )
        search[fname] = kind.fields[fname].check_search(f"{where}.search.{fname}", space)
    return Step(name, params, search)


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
    kinds = step_kinds()
    steps = tuple(_step(f"steps[{i}]", raw_step, kinds) for i, raw_step in enumerate(raw_steps))
    return Recipe(name.strip(), description, steps)


def reference_steps(recipe: Recipe) -> list[str]:
    """The steps of ``recipe`` that need a hamjax reference model, described for an error message.

    Args:
      recipe: a validated :class:`Recipe`.

    Returns:
      One ``"steps[i] (kind, fields)"`` per such step, in order; empty when
      the recipe runs on any model.

    Examples:
      >>> from hamjax import recipes
      >>> recipes.reference_steps(recipes.validate({"name": "r", "steps": [{"kind": "distill", "depth_ratio": 0.5}]}))
      ['steps[0] (distill, depth_ratio=0.5)']
      >>> recipes.reference_steps(recipes.load("nm-2-4"))
      []
    """
    kinds = step_kinds()
    found = []
    for i, step in enumerate(recipe.steps):
        needs = kinds[step.kind].reference
        what = needs(dict(step.params)) if needs else None
        if what is not None:
            found.append(f"steps[{i}] ({step.kind}{', ' + what if what else ''})")
    return found


def run(
    recipe: Recipe, context: Context, *, scope: Callable[[int, Step], contextlib.AbstractContextManager] | None = None
) -> Context:
    """Run every step of ``recipe`` in order on ``context``.

    Args:
      recipe: a validated :class:`Recipe`.
      context: the starting :class:`Context` (the untrained or pretrained model).
      scope: ``scope(index, step)`` gives a context manager each step runs
        inside (a profiler trace, a timer), or ``None``.

    Returns:
      The final :class:`Context`; ``context.stages`` lists what each step produced.

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> dataset = hamjax.data.load("digits")
      >>> apply_fn, params = hamjax.functional(hamjax.models.build("mlp", input_shape=(8, 8, 1)))
      >>> r = recipes.validate({"name": "r", "steps": [{"kind": "train", "epochs": 1}]})
      >>> ctx = recipes.run(r, recipes.Context(apply_fn, params, dataset, progress=False))  # doctest: +SKIP
      >>> [s.name for s in ctx.stages]  # doctest: +SKIP
      ['dense']
    """
    kinds = step_kinds()
    for index, step in enumerate(recipe.steps):
        with contextlib.nullcontext() if scope is None else scope(index, step):
            context = kinds[step.kind].run(dict(step.params), context)
    return context
