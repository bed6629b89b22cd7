"""A reference model on disk: its config as JSON and its variables through orbax (no pickle).

``save(path, config, variables)`` writes ``path/model.json`` (atomically)
and ``path/variables``; ``load(path)`` rebuilds the model from the config
and restores the variables into it. ``hamjax optimize`` saves the trained
model this way and ``hamjax export`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def config_to_dict(config) -> dict:
    """``{"type": "MLPConfig", "fields": {...}}``, JSON-ready."""
    if type(config).__name__ not in _CONFIGS or not dataclasses.is_dataclass(config):
        raise ValueError(f"saved: expected a reference model config, got {type(config).__name__}")
    return {"type": type(config).__name__, "fields": dataclasses.asdict(config)}


def config_from_dict(d: dict):
    """The config :func:`config_to_dict` described (lists become tuples; the config validates itself)."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in _CONFIGS:
        raise ValueError(f"saved: unknown config type {kind!r}; expected one of {sorted(_CONFIGS)}")
    cls = _CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    fields = d.get("fields", {})
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"saved: {kind} has no field(s) {unknown}")
    return cls(**{k: _tuples(v) for k, v in fields.items()})


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
      ValueError: a file of another format or a bad config.
    """
    path = Path(path)
    if not (path / "model.json").is_file():
        raise FileNotFoundError(f"saved.load: no model.json in {str(path)!r} (write one with hamjax.models.saved.save)")
    try:
        entry = json.loads((path / "model.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"saved.load: {path / 'model.json'} is not JSON: {err}") from err
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise ValueError(f"saved.load: {path / 'model.json'} is not a {FORMAT} file")
    config = config_from_dict(entry.get("config"))
    apply_fn, like = functional(from_config(config, seed=seed))
    variables = checkpoint.load_tree(path / "variables", like=like)
    return apply_fn, variables, config, entry.get("meta", {})
