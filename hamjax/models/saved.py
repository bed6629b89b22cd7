"""A reference model on disk: its config as JSON and its variables through orbax (no pickle).

``save(path, config, variables)`` writes ``path/model.json`` (atomically)
and ``path/variables``; ``load(path)`` rebuilds the model from the config
and restores the variables into it. ``hamjax optimize`` saves the trained
model this way and ``hamjax export`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from typing import Any

from hamjax import checkpoint
from hamjax._base import functional
from hamjax.models.cnn import CNNConfig
from hamjax.models.hamnet import HAMNetConfig
from hamjax.models.mlp import MLPConfig
from hamjax.models.student import from_config
from hamjax.models.vit import ViTConfig

FORMAT = "hamjax.model/1"
_CONFIGS = {c.__name__: c for c in (MLPConfig, CNNConfig, ViTConfig, HAMNetConfig)}
_KEYS = {"format", "config", "meta"}


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _describe(tp) -> str:
    """``int``, ``float``, ``str``, ``list of int`` or ``list of 3 int``: a config field's type as JSON holds it."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} {_describe(args[0])}"
    return getattr(tp, "__name__", str(tp))


def _fits(tp, value) -> bool:
    """Whether the JSON ``value`` has the type ``tp`` a config field declares."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return len(value) == len(args) and all(_fits(a, v) for a, v in zip(args, value, strict=True))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def config_to_dict(config) -> dict:
    """``{"type": "MLPConfig", "fields": {...}}``, JSON-ready."""
    if type(config).__name__ not in _CONFIGS or not dataclasses.is_dataclass(config):
        raise ValueError(f"saved: expected a reference model config, got {type(config).__name__}")
    return {"type": type(config).__name__, "fields": dataclasses.asdict(config)}


def config_from_dict(d: dict, where: str = "saved: config"):
    """The config :func:`config_to_dict` described, checked field by field (lists become tuples).

    Args:
      d: ``{"type": "MLPConfig", "fields": {...}}``.
      where: the start of error messages (``load`` gives the file's name).

    Raises:
      ValueError: naming the key or field that is missing, unknown or of the
        wrong type, or the config's own complaint about a value.

    Examples:
      >>> from hamjax.models import saved
      >>> saved.config_from_dict({"type": "MLPConfig", "fields": {"sizes": [64, 10]}}).sizes
      (64, 10)
      >>> saved.config_from_dict({"type": "MLPConfig", "fields": {"sizes": "64,10"}})
      Traceback (most recent call last):
      ...
      ValueError: saved: config.fields.sizes must be a list of int, got '64,10' (str)
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping {{type, fields}}, got {type(d).__name__}")
    missing, extra = sorted({"type", "fields"} - set(d)), sorted(set(d) - {"type", "fields"})
    if missing or extra:
        problem = f"lacks the key(s) {missing}" if missing else f"has unknown key(s) {extra}"
        raise ValueError(f"{where} {problem}; expected exactly 'type' and 'fields'")
    kind = d["type"]
    if kind not in _CONFIGS:
        raise ValueError(f"{where}.type: unknown model kind {kind!r}; expected one of {sorted(_CONFIGS)}")
    cls, fields = _CONFIGS[kind], d["fields"]
    if not isinstance(fields, dict):
        raise ValueError(f"{where}.fields must be a mapping of field names to values, got {type(fields).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{where}.fields: {kind} has no field(s) {unknown}")
    for name, value in fields.items():
        if not _fits(hints[name], value):
            raise ValueError(
                f"{where}.fields.{name} must be {_describe(hints[name])}, got {value!r} ({type(value).__name__})"
            )
    try:
        return cls(**{k: _tuples(v) for k, v in fields.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}.fields: {err}") from None


def save(path: str | os.PathLike, config, variables, *, meta: dict | None = None) -> Path:
    """Save a reference model: ``path/model.json`` and ``path/variables``.

    Args:
      path: a directory (created).
      config: the model's config (:func:`hamjax.models.config_of`).
      variables: its variables, as :func:`hamjax.functional` returns them.
      meta: JSON-ready facts to keep with it (the data it was trained on).

    Returns:
      ``path``.
    """
    path = Path(path)
    entry = {"format": FORMAT, "config": config_to_dict(config), "meta": dict(meta or {})}
    text = json.dumps(entry, indent=2, sort_keys=True)
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.save_tree(path / "variables", variables)
    checkpoint.atomic_write(path / "model.json", text)
    return path


def load(path: str | os.PathLike, *, seed: int = 0) -> tuple[Any, Any, Any, dict]:
    """Load a model :func:`save` wrote.

    Returns:
      ``(apply_fn, variables, config, meta)``.

    Raises:
      FileNotFoundError: no ``model.json`` under ``path``.
      ValueError: a file of another format, or a ``model.json`` that does not
        fit its schema (``format``, ``config`` with the config's field names
        and types, ``meta`` a mapping); the message names the file and the
        field.
    """
    path = Path(path)
    file = path / "model.json"
    if not file.is_file():
        raise FileNotFoundError(f"saved.load: no model.json in {str(path)!r} (write one with hamjax.models.saved.save)")
    try:
        entry = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"saved.load: {file} is not JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"saved.load: {file} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"saved.load: {file} must hold a JSON object, got {type(entry).__name__}")
    if "format" not in entry:
        raise ValueError(f"saved.load: {file} has no format field; expected format = {FORMAT!r}")
    if entry["format"] != FORMAT:
        raise ValueError(f"saved.load: {file}: format must be {FORMAT!r}, got {entry['format']!r}")
    missing, extra = sorted(_KEYS - set(entry)), sorted(set(entry) - _KEYS)
    if missing or extra:
        problem = f"lacks the key(s) {missing}" if missing else f"has unknown key(s) {extra}"
        raise ValueError(f"saved.load: {file} {problem}; expected {sorted(_KEYS)}")
    if not isinstance(entry["meta"], dict):
        raise ValueError(f"saved.load: {file}: meta must be a mapping, got {type(entry['meta']).__name__}")
    config = config_from_dict(entry["config"], where=f"saved.load: {file}: config")
    apply_fn, like = functional(from_config(config, seed=seed))
    try:
        variables = checkpoint.load_tree(path / "variables", like=like)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"saved.load: {path / 'variables'} does not hold the variables of the {type(config).__name__} that"
            f" {file} describes: {err}"
        ) from err
    return apply_fn, variables, config, entry["meta"]
