"""The user's own model, named by a spec such as ``"package.module:function"``.

``hamjax optimize --model pkg.mod:fn`` and :func:`import_model` take a
function that builds the model and returns the triple ``(apply_fn, params,
example_input)``: the pair of the contract (:func:`hamjax.functional`,
:func:`hamjax.linen_functional` or a plain ``jax.numpy`` function) and one
input batch ``(batch, *input_shape)``. Everything is checked before any
training, and every failure is a one-line :class:`ModelImportError` (a
``ValueError``, so the CLI prints it as a one-line error).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax._base import call_model
from hamjax._checks import check_int

__all__ = ["ImportedModel", "ModelImportError", "check_model", "import_model"]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_SPEC_FORMS = "'package.module:function' or 'path/to/file.py:function'"


class ModelImportError(ValueError):
    """A model spec that cannot be imported, or a model that does not keep the contract."""


class ImportedModel(NamedTuple):
    """What :func:`import_model` returns; it unpacks as ``apply_fn, params, example_input = ...``.

    Attributes:
      apply_fn: ``apply_fn(params, x) -> logits``, any kind of the contract.
      params: its params, a pytree of arrays.
      example_input: one input batch ``(batch, *input_shape)``.
    """

    apply_fn: Callable[..., Any]
    params: Any
    example_input: jax.Array | np.ndarray


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _kind(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def _is_array(value: Any) -> bool:
    return isinstance(value, jax.Array | np.ndarray) and (
        jnp.issubdtype(value.dtype, jnp.number) or value.dtype == bool
    )


def _check_params(where: str, params: Any, error: type[Exception]) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise error(f"{where}: params holds no arrays; expected a pytree of arrays (got {_kind(params)})")
    for path, leaf in leaves:
        if not _is_array(leaf):
            raise error(
                f"{where}: params{jax.tree_util.keystr(path)} is {_kind(leaf)}; expected a pytree of numeric arrays"
            )


def _check_example(where: str, example: Any, error: type[Exception]) -> None:
    if not _is_array(example):
        raise error(f"{where}: example_input is {_kind(example)}; expected an array (batch, *input_shape)")
    if example.ndim < 2 or example.shape[0] < 1:
        raise error(f"{where}: example_input has shape {tuple(example.shape)}; expected (batch >= 1, *input_shape)")


def _logits_shape(where: str, apply_fn, params, example, error: type[Exception]) -> tuple[int, int]:
    """The shape of ``apply_fn(params, example)``, traced without running it, checked to be ``(batch, classes)``."""
    if not callable(apply_fn):
        raise error(f"{where}: apply_fn is {_kind(apply_fn)}; expected a callable apply_fn(params, x)")
    _check_params(where, params, error)
    _check_example(where, example, error)
    try:
        out = jax.eval_shape(lambda p, x: call_model(apply_fn, p, x)[0], params, example)
    except Exception as err:  # whatever the user's function raises, reported on one line
        raise error(f"{where}: apply_fn(params, example_input) raised {_one_line(err)}") from err
    batch = example.shape[0]
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise error(
            f"{where}: apply_fn(params, example_input) returned {_kind(out)}; expected one array of logits "
            f"(batch={batch}, classes)"
        )
    if len(out.shape) != 2 or out.shape[0] != batch or out.shape[1] < 1:
        raise error(
            f"{where}: apply_fn(params, example_input) returned shape {tuple(out.shape)}; expected logits "
            f"(batch={batch}, classes)"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise error(f"{where}: apply_fn(params, example_input) returned dtype {out.dtype}; expected float logits")
    return int(out.shape[0]), int(out.shape[1])


@contextlib.contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while the user's code is imported and called, as ``python -m`` does."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _parse(spec: Any) -> tuple[str, str, bool]:
    """``(module or file, attribute path, is_file)`` of a spec, or raises on bad syntax."""
    if not isinstance(spec, str):
        raise ModelImportError(f"import_model: spec must be a string {_SPEC_FORMS}, got {_kind(spec)}")
    module, sep, attr = spec.strip().rpartition(":")
    is_file = module.endswith(".py") or "/" in module or os.sep in module
    if not sep or not module or not _DOTTED.fullmatch(attr) or not (is_file or _DOTTED.fullmatch(module)):
        raise ModelImportError(f"import_model: spec must look like {_SPEC_FORMS}, got {spec!r}")
    return module, attr, is_file


def _load_file(spec: str, filename: str):
    path = Path(filename).expanduser().resolve()
    if not path.is_file():
        raise ModelImportError(f"import_model: spec {spec!r} names the file {filename}, which does not exist")
    # A name of its own per file, so that two files called model.py do not replace each other.
    stem = re.sub(r"\W", "_", path.stem)
    name = f"hamjax_user_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModelImportError(f"import_model: cannot import the file {filename} (spec {spec!r}): not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickle look the module up by name while it runs
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # a syntax error or anything the file raises at import
        del sys.modules[name]
        raise ModelImportError(
            f"import_model: cannot import the file {filename} (spec {spec!r}): {_one_line(err)}"
        ) from err
    return module


def _load_module(spec: str, name: str):
    try:
        return importlib.import_module(name)
    except Exception as err:  # ImportError, or anything the module raises at import
        raise ModelImportError(
            f"import_model: cannot import module {name!r} (spec {spec!r}): {_one_line(err)}"
        ) from err


def import_model(spec: str) -> ImportedModel:
    """Import a function that builds a model, call it, and check what it returns.

    ``spec`` is ``"package.module:function"`` (the module is imported with
    the working directory on ``sys.path``, as ``python -m`` does) or
    ``"path/to/file.py:function"`` (the file is run with its folder on
    ``sys.path``). ``function`` may be a dotted path inside the module
    (``"mod:Factory.build"``). It is called with no arguments and must return
    the triple ``(apply_fn, params, example_input)``:

    * ``apply_fn(params, x) -> logits``: any model kind of the contract, a
      plain ``jax.numpy`` function or what :func:`hamjax.functional` and
      :func:`hamjax.linen_functional` return;
    * ``params``: a pytree of numeric arrays;
    * ``example_input``: one batch ``(batch, *input_shape)``, an array.

    ``apply_fn(params, example_input)`` is then traced (with
    :func:`jax.eval_shape`, so nothing is computed) and must give float
    logits ``(batch, classes)``. Pass the result to :func:`check_model`
    with the data's class count before training.

    Args:
      spec: ``"package.module:function"`` or ``"path/to/file.py:function"``.

    Returns:
      An :class:`ImportedModel` ``(apply_fn, params, example_input)``.

    Raises:
      ModelImportError: a ``ValueError`` with a one-line message, for a
        spec of bad syntax, a module or file that cannot be imported (with
        the ImportError's text), a missing attribute, a function that
        raises, or a result that is not the triple above.

    Examples:
      >>> import os, tempfile
      >>> from hamjax.models import import_model
      >>> path = os.path.join(tempfile.mkdtemp(), "linear.py")
      >>> with open(path, "w") as f:
      ...     _ = f.write(
      ...         "import jax.numpy as jnp\\n"
      ...         "def build():\\n"
      ...         "    return (lambda p, x: x @ p['w']), {'w': jnp.zeros((3, 2))}, jnp.ones((4, 3))\\n"
      ...     )
      >>> apply_fn, params, example = import_model(f"{path}:build")
      >>> apply_fn(params, example).shape
      (4, 2)
      >>> import_model("json")
      Traceback (most recent call last):
      ...
      hamjax.models.external.ModelImportError: import_model: spec must look like 'package.module:function' or 'path/to/file.py:function', got 'json'
    """
    module_name, attr, is_file = _parse(spec)
    folder = str(Path(module_name).expanduser().resolve().parent) if is_file else os.getcwd()
    with _on_path(folder):
        module = _load_file(spec, module_name) if is_file else _load_module(spec, module_name)
        shown = module_name if not is_file else f"the file {module_name}"
        target: Any = module
        for i, part in enumerate(attr.split(".")):
            if not hasattr(target, part):
                owner = shown if i == 0 else f"{shown}:{'.'.join(attr.split('.')[:i])}"
                public = sorted(n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None)))
                listed = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
                raise ModelImportError(
                    f"import_model: {owner} has no attribute {part!r} (spec {spec!r}); its callables: {listed or 'none'}"
                )
            target = getattr(target, part)
        call = f"{module_name}:{attr}()"
        if not callable(target):
            raise ModelImportError(f"import_model: {module_name}:{attr} is {_kind(target)}, not a function")
        try:
            result = target()
        except Exception as err:  # whatever the user's function raises, reported on one line
            raise ModelImportError(f"import_model: calling {call} raised {_one_line(err)}") from err
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise ModelImportError(
            f"import_model: {call} must return (apply_fn, params, example_input), got {_kind(result)}"
        )
    apply_fn, params, example = result
    _logits_shape(f"import_model: {call}", apply_fn, params, example, ModelImportError)
    return ImportedModel(apply_fn, params, example)


def check_model(apply_fn, params, example, num_classes: int, *, where: str = "check_model") -> tuple[int, int]:
    """Check, before any training, that a model gives one logit per class of the data.

    ``apply_fn(params, example)`` is traced with :func:`jax.eval_shape`
    (nothing is computed) and must return float logits ``(batch,
    num_classes)``. Pass an example batch of the data itself (e.g.
    ``dataset.train.x[:2]``) so that the input shape is checked too.

    Args:
      apply_fn: the model's apply function, any kind of the contract.
      params: its params, a pytree of numeric arrays.
      example: an input batch ``(batch, *input_shape)``.
      num_classes: the number of classes of the labels (``Dataset.num_classes``).
      where: the caller label that starts error messages.

    Returns:
      The logits' shape ``(batch, num_classes)``.

    Raises:
      ValueError: one line, when the model's output does not have
        ``num_classes`` logits per example, when ``apply_fn`` raises on
        ``example``, or when ``params`` or ``example`` are not arrays.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.models import check_model
      >>> apply_fn, params = (lambda p, x: x @ p["w"]), {"w": jnp.zeros((3, 10))}
      >>> check_model(apply_fn, params, jnp.ones((2, 3)), num_classes=10)
      (2, 10)
      >>> check_model(apply_fn, params, jnp.ones((2, 3)), num_classes=4)
      Traceback (most recent call last):
      ...
      ValueError: check_model: the model gives 10 logits per example, but the labels have 4 classes; expected logits (batch, 4)
    """
    num_classes = check_int(where, "num_classes", num_classes, minimum=1)
    batch, classes = _logits_shape(where, apply_fn, params, example, ValueError)
    if classes != num_classes:
        raise ValueError(
            f"{where}: the model gives {classes} logits per example, but the labels have {num_classes} classes; "
            f"expected logits (batch, {num_classes})"
        )
    return batch, classes
