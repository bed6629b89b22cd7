"""The models a tune run trains: one per structural bucket, each with its population trainer.

A run trains one model, ``(apply_fn, params)``; or, given a builder
``model(**structure) -> (apply_fn, params)``, one model per value of the
space's structural names (:data:`STRUCTURAL`: ``width``), built once per
run when the first trial of that shape is asked. Trials of one width share
a bucket, so each width compiles once and its trials train together.

:func:`reference` is the builder of a reference model
(:data:`hamjax.models.MODELS`) whose width is :data:`WIDTH_FIELDS`' field.
The population trainer of an apply function is kept for the process
(:func:`trainer_of`), so a second study of the same model compiles nothing again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from hamjax.search.population import Population

STRUCTURAL = ("width",)
"""The bucketed names that change the model itself (the builder's keyword arguments)."""

WIDTH_FIELDS = {"mlp": "sizes", "cnn": "dense", "vit": "hidden_size", "hamnet": "hidden_size"}
"""What ``width`` sets in each reference model's config: every hidden size (``sizes``, ``dense``) or the one."""

_TRAINERS: dict = {}  # (id(apply_fn), execution) -> (apply_fn, Population): compiled programs kept per model
_TRAINERS_KEPT = 4


def trainer_of(apply_fn, execution: str, teacher) -> Population:
    """The population trainer of ``apply_fn``: the one of an earlier run in this process when there is one.

    A second study of the same model (another seed, a resumed study) then
    compiles nothing again; with ``"auto"`` it keeps the execution chosen
    first. A distilling trainer (its teacher's params) is never shared.

    Examples:
      >>> f = lambda p, x: x @ p["w"]
      >>> trainer_of(f, "vmap", None) is trainer_of(f, "vmap", None)
      True
    """
    if teacher is not None:
        return Population(apply_fn, execution=execution, teacher=teacher)
    key = (id(apply_fn), execution)
    if key not in _TRAINERS:
        while len(_TRAINERS) >= _TRAINERS_KEPT:
            _TRAINERS.pop(next(iter(_TRAINERS)))
        _TRAINERS[key] = (apply_fn, Population(apply_fn, execution=execution))  # apply_fn held: its id stays its own
    return _TRAINERS[key][1]


class Model(NamedTuple):
    """One bucket's model: its apply function, its params (a tree or ``init(key)``) and its trainer."""

    apply_fn: Any
    params: Any
    trainer: Population


class Models:
    """The model of each structural bucket of a run.

    Args:
      apply_fn, params: the one model of a run without a builder.
      build: ``build(**structure) -> (apply_fn, params)``, or ``None``.
      execution: how the trainers run the member axis (``"auto"`` until :meth:`fix` is called).
      teacher: ``(apply_fn, params)`` to distill from, or ``None``.

    Examples:
      >>> import jax.numpy as jnp
      >>> build = lambda width: (lambda p, x: x @ p["w"], {"w": jnp.zeros((4, width))})
      >>> models = Models(None, None, build=build, execution="vmap", teacher=None)
      >>> models.get((("width", 8),)).params["w"].shape, len(models.built)
      ((4, 8), 1)
    """

    def __init__(self, apply_fn, params, *, build: Callable | None, execution: str, teacher):
        self.apply_fn, self.params, self.build = apply_fn, params, build
        self.execution, self.teacher = execution, teacher
        self.built: dict[tuple, Model] = {}

    def get(self, structure: tuple) -> Model:
        """The model of ``structure`` (``((name, value), ...)`` of :data:`STRUCTURAL` names), built on first use."""
        if structure not in self.built:
            if self.build is None:
                apply_fn, params = self.apply_fn, self.params
            else:
                built = self.build(**dict(structure))
                if not isinstance(built, tuple) or len(built) != 2 or not callable(built[0]):
                    raise ValueError(
                        f"tune: model(**{dict(structure)}) must return (apply_fn, params), got {type(built).__name__}"
                    )
                apply_fn, params = built
            self.built[structure] = Model(apply_fn, params, trainer_of(apply_fn, self.execution, self.teacher))
        return self.built[structure]

    def fix(self) -> str:
        """After the first round: every trainer (and later ones) runs the execution the first chose (``"auto"``)."""
        if self.execution == "auto":
            first = next(iter(self.built.values())).trainer
            self.execution = first.chosen or first.execution
            for model in self.built.values():
                model.trainer.execution = self.execution
                model.trainer.chosen = model.trainer.chosen or self.execution
        return self.execution


def reference(name: str, dataset, *, seed: int = 0) -> Callable:
    """The builder ``build(width=None) -> (apply_fn, params)`` of reference model ``name`` for ``dataset``.

    ``width`` replaces the :data:`WIDTH_FIELDS` field of the model's default
    config (every hidden layer of the MLP and the CNN's dense layers; the
    ViT's and HAMNet's ``hidden_size``); ``None`` keeps the default.

    Args:
      name: one of :data:`hamjax.models.MODELS`.
      dataset: a :class:`hamjax.data.Dataset` (its input shape and classes).
      seed: the models' initialisation seed.

    Examples:
      >>> import jax, hamjax
      >>> apply_fn, params = reference("mlp", hamjax.data.load("digits"))(width=32)
      >>> [tuple(a.shape) for a in jax.tree.leaves(params)][:2]
      [(32,), (64, 32)]
    """
    from hamjax import models
    from hamjax._base import functional

    if name not in models.MODELS:
        raise ValueError(f"tune: a width needs a reference model {models.MODELS}, got {name!r}")
    shape = {"input_shape": dataset.input_shape, "num_classes": dataset.num_classes}

    def build(width=None):
        if width is None:
            return functional(models.build(name, seed=seed, **shape))
        field = WIDTH_FIELDS[name]
        default = getattr(models.config_of(models.build(name, seed=seed, **shape)), field)
        value = width if isinstance(default, int) else tuple([width] * len(default))
        if name == "mlp":  # sizes: input, hidden..., classes
            value = (default[0], *([width] * (len(default) - 2)), default[-1])
        return functional(models.build(name, seed=seed, **shape, **{field: value}))

    return build
