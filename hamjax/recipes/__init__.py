"""Recipes: named, ordered chains of steps, stored as TOML in ``transforms/``.

Every step kind declares its fields (type, default, bounds); loading
validates every field and names the bad one. The layers, bottom up:

* :mod:`hamjax.recipes.schema`: :class:`Field`, :class:`StepKind`,
  :class:`Step`, :class:`Recipe`, :class:`Context`, :class:`RecipeError`
  (imports nothing else from hamjax);
* :mod:`hamjax.recipes.steps`: one module per built-in step kind, each
  exposing ``KIND``; ``steps.BUILTIN`` maps their names to them;
* :mod:`hamjax.recipes.registry`: :func:`validate`, :func:`run` and
  :func:`register_step` for third-party kinds;
* :mod:`hamjax.recipes.files`: :func:`load`, :func:`save`, :func:`dumps`,
  :func:`available`.

Examples:
  >>> from hamjax import recipes
  >>> [s.kind for s in recipes.load("default").steps]
  ['train', 'distill', 'prune', 'quantize', 'export']
"""

from hamjax.recipes.files import RECIPE_SUFFIX, available, dumps, load, save
from hamjax.recipes.registry import reference_steps, register_step, run, step_kinds, validate
from hamjax.recipes.schema import REQUIRED, Context, Field, Recipe, RecipeError, Step, StepKind

__all__ = [
    "RECIPE_SUFFIX",
    "REQUIRED",
    "Context",
    "Field",
    "Recipe",
    "RecipeError",
    "Step",
    "StepKind",
    "available",
    "dumps",
    "load",
    "reference_steps",
    "register_step",
    "run",
    "save",
    "step_kinds",
    "validate",
]
