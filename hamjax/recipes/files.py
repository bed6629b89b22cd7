"""Recipes on disk: the bundled ones in ``transforms/`` and TOML files of the user's own.

A recipe file looks like this::

    name = "baseline"
    description = "Train the model; no compression."

    [[steps]]
    kind = "train"
    epochs = 15
    learning_rate = 1e-3

    [steps.search]                       # optional: what a search may vary
    learning_rate = { low = 1e-4, high = 1e-2, log = true }

Loading validates every field and names the bad one. The CLI, the
autotuner and the searches read and write this one format, so a search's
winner can be saved, shared and re-run.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

from hamjax import checkpoint
from hamjax.recipes.registry import validate
from hamjax.recipes.schema import Recipe, RecipeError

__all__ = ["RECIPE_SUFFIX", "available", "dumps", "load", "save"]

RECIPE_SUFFIX = ".toml"


def _bundled_dir() -> Path:
    """The recipes shipped in the wheel, or the source checkout's ``transforms/``."""
    packaged = resources.files("hamjax") / "transforms"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent.parent / "transforms"


def available() -> list[str]:
    """Names of the bundled recipes.

    Examples:
      >>> from hamjax import recipes
      >>> "default" in recipes.available()
      True
    """
    folder = _bundled_dir()
    return sorted(p.stem for p in folder.glob(f"*{RECIPE_SUFFIX}")) if folder.is_dir() else []


def load(name_or_path: str | os.PathLike) -> Recipe:
    """Load and validate a recipe by bundled name or by file path.

    Args:
      name_or_path: a bundled recipe's name (``"baseline"``) or a path to a
        ``.toml`` file.

    Returns:
      A :class:`~hamjax.recipes.Recipe`.

    Raises:
      RecipeError: for an unknown name, a file that cannot be read or is not
        UTF-8, invalid TOML or a bad field; the message names the file and the field.

    Examples:
      >>> from hamjax import recipes
      >>> [s.kind for s in recipes.load("int8-static").steps]
      ['train', 'quantize']
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
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the recipe as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from err
    except OSError as err:
        raise RecipeError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        return validate(raw)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def dumps(recipe: Recipe) -> str:
    """The TOML text of ``recipe``.

    Args:
      recipe: a validated :class:`~hamjax.recipes.Recipe`.

    Examples:
      >>> from hamjax import recipes
      >>> print(recipes.dumps(recipes.validate({"name": "r", "steps": [{"kind": "train"}]})).splitlines()[0])
      name = "r"
    """
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())


def save(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write ``recipe`` as TOML, atomically (write a temporary file, then rename).

    Args:
      recipe: a validated :class:`~hamjax.recipes.Recipe`.
      path: the ``.toml`` file to write; its folder is created.

    Returns:
      The path written.

    Raises:
      RecipeError: for a path that does not end in ``.toml``.

    Examples:
      >>> import tempfile, pathlib
      >>> from hamjax import recipes
      >>> path = recipes.save(recipes.load("baseline"), pathlib.Path(tempfile.mkdtemp()) / "copy.toml")
      >>> recipes.load(path) == recipes.load("baseline")
      True
    """
    path = Path(path)
    if path.suffix != RECIPE_SUFFIX:
        raise RecipeError(f"save: recipe path must end in {RECIPE_SUFFIX}, got {str(path)!r}")
    validate(recipe.to_dict())
    checkpoint.atomic_write(path, dumps(recipe))
    return path
