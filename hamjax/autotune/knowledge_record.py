"""One knowledge-base record: what a recipe measured on a model, where and when, and its JSON-lines form.

A :class:`Record` is plain data (dicts of JSON values, never pickled): the
model's signature (:meth:`hamjax.autotune.signature.Signature.to_dict`), its
family, the raw recipe dict (:meth:`hamjax.recipes.Recipe.to_dict`), the
measured results, the environment that measured them, the time (Unix
seconds), the source (who measured: a machine, a team, an import) and a
confidence in (0, 1]. Records are checked when made, so a record read back
from a file or a database is either whole or refused with the field at fault.

The results dict holds ``accuracy_drop`` (points, required), ``feasible``
(bool, required), and optionally ``latency_ms``, ``size_bytes`` (the int
storage), ``file_bytes`` (the deployed file),
``size_reduction`` and ``speedup`` (ratios dense / candidate), ``score`` and
``constraints`` (the limits the run was held to). Other keys are kept as they
are, so records from a newer hamjax still load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from hamjax._checks import check_number

# Result keys with their bounds: (minimum, exclusive minimum); accuracy_drop and score may be negative.
RESULT_NUMBERS = {
    "accuracy_drop": (None, False),
    "latency_ms": (0.0, True),
    "size_bytes": (0.0, False),
    "file_bytes": (0.0, False),
    "size_reduction": (0.0, True),
    "speedup": (0.0, True),
    "score": (None, False),
}
REQUIRED_RESULTS = ("accuracy_drop", "feasible")
FIELDS = ("signature", "family", "recipe", "results", "environment", "time", "source", "confidence")


def _json_value(where: str, arg: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{where}: {arg} must hold JSON values only (finite numbers), got {value!r} ({error})"
        ) from None


def _mapping(where: str, arg: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {arg} must be a dict, got {value!r}")
    if not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}: {arg} must have string keys, got {sorted(map(repr, value))!r}")
    _json_value(where, arg, value)
    return json.loads(json.dumps(value))  # a deep, plain copy: the record owns its data


def check_results(where: str, results: Any) -> dict:
    """``results`` as a plain dict, or raises naming the key at fault.

    Args:
      where: the caller label.
      results: the measured results of one recipe (see the module docstring).

    Returns:
      A plain copy of the dict.

    Raises:
      ValueError: not a dict, a required key missing, a number that is not
        finite or out of range, ``feasible`` not a bool.

    Examples:
      >>> check_results("Record", {"accuracy_drop": 0.4, "feasible": True})["accuracy_drop"]
      0.4
      >>> check_results("Record", {"accuracy_drop": float("nan"), "feasible": True})
      Traceback (most recent call last):
      ...
      ValueError: Record: results.accuracy_drop must be a finite number, got nan
    """
    results = dict(results) if isinstance(results, Mapping) else results
    if not isinstance(results, dict):
        raise ValueError(f"{where}: results must be a dict, got {results!r}")
    for key in REQUIRED_RESULTS:
        if key not in results:
            raise ValueError(f"{where}: results must have {key!r}, got keys {sorted(results)!r}")
    for key, (minimum, exclusive) in RESULT_NUMBERS.items():
        value = results.get(key)
        if value is not None:
            checked = check_number(where, f"results.{key}", value, minimum=minimum, exclusive_minimum=exclusive)
            results[key] = value if isinstance(value, int) else checked
    if not isinstance(results["feasible"], bool):
        raise ValueError(f"{where}: results.feasible must be a bool, got {results['feasible']!r}")
    if results.get("constraints") is not None:
        _mapping(where, "results.constraints", results["constraints"])
    return _mapping(where, "results", results)


def recipe_key(recipe: Mapping) -> str:
    """A canonical key of a raw recipe dict: equal for recipes that run the same steps with the same fields.

    The recipe's name, description and search ranges do not count. Where the
    recipe validates on this machine (:func:`hamjax.recipes.validate`), the
    key is taken from the validated recipe, so fields left at their defaults
    and fields written out give the same key; a recipe with a step kind this
    machine lacks is keyed as written.

    Args:
      recipe: a raw recipe dict (``{"steps": [{"kind": ...}, ...]}``).

    Returns:
      A 32-character hex digest.

    Raises:
      ValueError: ``recipe`` has no list of steps, each a dict with a ``kind``.

    Examples:
      >>> a = recipe_key({"name": "a", "steps": [{"kind": "quantize"}, {"kind": "export"}]})
      >>> b = recipe_key({"name": "b", "steps": [{"kind": "quantize", "bits": 8}, {"kind": "export"}]})
      >>> a == b, len(a)
      (True, 32)
    """
    steps = recipe.get("steps") if isinstance(recipe, Mapping) else None
    if not isinstance(steps, (list, tuple)) or not steps:
        raise ValueError(f"recipe_key: recipe must be a dict with a non-empty list of steps, got {recipe!r}")
    if not all(isinstance(s, Mapping) and isinstance(s.get("kind"), str) for s in steps):
        raise ValueError(f"recipe_key: recipe steps must each be a dict with a 'kind', got {steps!r}")
    from hamjax import recipes

    with contextlib.suppress(ValueError):  # a step kind or field this machine does not know: keyed as written
        steps = recipes.validate({"name": "keyed", "steps": [dict(s) for s in steps]}).to_dict()["steps"]
    canonical = [{k: v for k, v in s.items() if k != "search"} for s in steps]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class Record:
    """What one recipe measured on one model: the unit the knowledge base stores, merges and exchanges.

    Args:
      signature: the model's signature as a dict (``Signature.to_dict()``).
      family: the model family (``"mlp"``, ``"cnn"``, ``"transformer"``, ``"vit"``, ``"hybrid"``).
      recipe: the raw recipe dict (``Recipe.to_dict()``).
      results: the measured results (see the module docstring).
      environment: where it was measured (device, library versions...), JSON values.
      time: when, in Unix seconds.
      source: who measured it (a machine, a team, a file); trust is kept per source.
      confidence: how much the source trusts this record, in (0, 1] (e.g. lower for a cheap evaluation).
      id: the record's id (32 hex characters, a uuid4); ``None`` until stored.

    Raises:
      ValueError: a field of the wrong type, a non-finite number, an empty
        family or source, a confidence outside (0, 1].

    Examples:
      >>> r = Record({"family": "mlp"}, "mlp", {"steps": [{"kind": "export"}]},
      ...            {"accuracy_drop": 0.2, "feasible": True}, {}, 1.7e9, "lab")
      >>> r.confidence, r.id
      (1.0, None)
      >>> Record({}, "mlp", {"steps": [{"kind": "export"}]}, {"feasible": True}, {}, 1.7e9, "lab")
      Traceback (most recent call last):
      ...
      ValueError: Record: results must have 'accuracy_drop', got keys ['feasible']
    """

    signature: dict
    family: str
    recipe: dict
    results: dict
    environment: dict
    time: float
    source: str
    confidence: float = 1.0
    id: str | None = None

    def __post_init__(self):
        where = "Record"
        for arg in ("family", "source"):
            value = getattr(self, arg)
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise ValueError(f"{where}: {arg} must be a non-empty string of at most 200 characters, got {value!r}")
        if self.id is not None and not (
            isinstance(self.id, str) and len(self.id) == 32 and all(c in "0123456789abcdef" for c in self.id)
        ):
            raise ValueError(f"{where}: id must be 32 lowercase hex characters or None, got {self.id!r}")
        set_ = object.__setattr__
        set_(self, "signature", _mapping(where, "signature", self.signature))
        set_(self, "environment", _mapping(where, "environment", self.environment))
        set_(self, "recipe", _mapping(where, "recipe", self.recipe))
        recipe_key(self.recipe)  # a recipe without steps is refused here, not when merged
        set_(self, "results", check_results(where, self.results))
        set_(self, "time", check_number(where, "time", self.time, minimum=0.0))
        set_(self, "confidence", check_number(where, "confidence", self.confidence, minimum=0.0, maximum=1.0,
                                              exclusive_minimum=True))  # fmt: skip

    @property
    def recipe_key(self) -> str:
        """:func:`recipe_key` of the record's recipe."""
        return recipe_key(self.recipe)

    def to_dict(self) -> dict:
        """The record as one JSON object (the JSON-lines form), its id included."""
        return {"id": self.id, **{name: getattr(self, name) for name in FIELDS}}

    @classmethod
    def from_dict(cls, raw: Any) -> Record:
        """The record a :meth:`to_dict` object holds.

        Raises:
          ValueError: not a dict, a field missing or unknown, or a field the
            record refuses.

        Examples:
          >>> r = Record({}, "cnn", {"steps": [{"kind": "export"}]}, {"accuracy_drop": 0.0, "feasible": True},
          ...            {}, 0.0, "lab", id="0" * 32)
          >>> Record.from_dict(r.to_dict()) == r
          True
        """
        if not isinstance(raw, Mapping):
            raise ValueError(f"Record.from_dict: a record must be a JSON object, got {raw!r}"[:300])
        missing = [name for name in FIELDS if name not in raw and name != "confidence"]
        if missing:
            raise ValueError(f"Record.from_dict: missing fields {missing!r}")
        unknown = sorted(set(raw) - set(FIELDS) - {"id"})
        if unknown:
            raise ValueError(f"Record.from_dict: unknown fields {unknown!r}")
        return cls(**{k: raw[k] for k in raw})


def parse_line(line: str) -> Record:
    """The record one JSON line holds; NaN and infinities are refused like any malformed value.

    Args:
      line: one line of a JSON-lines export.

    Returns:
      The :class:`Record`.

    Raises:
      ValueError: bad JSON, or a record :meth:`Record.from_dict` refuses.

    Examples:
      >>> parse_line('{"accuracy_drop": NaN}')
      Traceback (most recent call last):
      ...
      ValueError: not valid JSON: NaN is not a number
    """

    def refuse(constant: str):
        raise ValueError(f"{constant} is not a number")

    try:
        raw = json.loads(line, parse_constant=refuse)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    except ValueError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    return Record.from_dict(raw)


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
