"""The models a tune run trains: one per structural bucket, each with its population trainer.

A run trains one model, ``(apply_fn, params)``; or, given a builder
``model(**structure) -> (apply_fn, params)``, one model per combination of
the space's structural values (:data:`STRUCTURAL`: ``width``, ``depth``,
``activation``; the builder gets those the space has, searched or fixed, as
keywords), built once per run when the first trial of that structure is
asked. Trials of one structure share a bucket, so each structure compiles
once and its trials train together.

:func:`reference` is the builder of a reference model
(:data:`hamjax.models.MODELS`): ``width`` sets :data:`WIDTH_FIELDS`' field,
``depth`` :data:`DEPTH_FIELDS`' and ``activation`` :data:`ACTIVATION_FIELDS`'
(the MLP's only). :func:`check_builder` refuses, before a study opens, a
structural name the builder takes no keyword for.
The population trainer of an apply function is kept for the process
(:func:`trainer_of`), so a second study of the same model compiles nothing again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from hamjax._checks import check_choice, check_int
from hamjax.models.mlp import ACTIVATIONS
from hamjax.search.population import Population

STRUCTURAL = ("width", "depth", "activation")
"""The bucketed names that change the model itself (the builder's keyword arguments)."""

WIDTH_FIELDS = {"mlp": "sizes", "cnn": "dense", "vit": "hidden_size", "hamnet": "hidden_size"}
"""What ``width`` sets in each reference model's config: every hidden size (``sizes``, ``dense``) or the one."""

DEPTH_FIELDS = {"mlp": "sizes", "cnn": "dense", "vit": "num_layers", "hamnet": "num_layers"}
"""What ``depth`` sets: the number of hidden layers (the MLP's, the CNN's dense ones) or of blocks."""

ACTIVATION_FIELDS = {"mlp": "activation"}
"""What ``activation`` sets: only the reference MLP's config has an activation to choose."""

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


def check_builder(where: str, build: Callable | None, names: Sequence[str]) -> None:
    """Refuse, before a study opens, structural ``names`` that ``build`` cannot make.

    Args:
      where: the calling function's name, for the message.
      build: the run's ``model=`` builder, or ``None``.
      names: the space's structural names (searched or fixed), in :data:`STRUCTURAL` order.

    Raises:
      ValueError: ``build`` is not callable, ``names`` without a builder, or a
        name the builder takes no keyword for (a builder with ``**kwargs``
        takes every name).

    Examples:
      >>> check_builder("tune", lambda width: None, ["width", "depth"])
      Traceback (most recent call last):
      ...
      ValueError: tune: the space searches ['depth'], but model(width) takes no such keyword; give a builder model(width, depth) -> (apply_fn, params)
    """
    if build is not None and not callable(build):
        raise ValueError(f"{where}: model must be model(**structure) -> (apply_fn, params), got {build!r}")
    names = list(names)
    if names and build is None:
        raise ValueError(f"{where}: {names} change the model: give model=lambda {', '.join(names)}: (apply_fn, params)")
    if not names or build is None:
        return
    try:
        signature = inspect.signature(build)
    except (TypeError, ValueError):  # a builder Python cannot inspect is called as it is
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    missing = [n for n in names if n not in {p.name for p in signature.parameters.values() if p.kind in kinds}]
    if missing:
        raise ValueError(
            f"{where}: the space searches {missing}, but model{signature} takes no such keyword; "
            f"give a builder model({', '.join(names)}) -> (apply_fn, params)"
        )


def reference(name: str, dataset, *, seed: int = 0, structure: Sequence[str] = ()) -> Callable:
    """The builder ``build(width=None, depth=None, activation=None) -> (apply_fn, params)`` of reference model ``name``.

    Each given keyword changes the model's default config for ``dataset``
    (``None`` keeps the default):

    * ``depth`` (>= 1): the MLP's hidden layers and the CNN's dense layers
      (the default's sizes, the last one repeated beyond them: depth 3 of
      ``(120, 84)`` is ``(120, 84, 84)``, depth 1 is ``(120,)``); the ViT's
      and HAMNet's ``num_layers``. The CNN's conv stages stay as they are.
    * ``width`` (>= 1): every hidden size of the MLP and of the CNN's dense
      layers (after ``depth``); the ViT's and HAMNet's ``hidden_size``.
    * ``activation``: the MLP's (:data:`hamjax.models.mlp.ACTIVATIONS`); the
      other reference models have none to choose, and their builder takes no
      ``activation`` keyword (:func:`check_builder` refuses it).

    Args:
      name: one of :data:`hamjax.models.MODELS`.
      dataset: a :class:`hamjax.data.Dataset` (its input shape and classes).
      seed: the models' initialisation seed.
      structure: the structural names a run will pass (:data:`STRUCTURAL`),
        refused here when the model cannot vary them.

    Returns:
      The builder; the ViT and HAMNet need a width divisible by their heads.

    Raises:
      ValueError: an unknown model, a name of ``structure`` the model cannot
        vary; the builder: a depth or width below 1, an unknown activation.

    Examples:
      >>> import jax, hamjax
      >>> build = reference("mlp", hamjax.data.load("digits"))
      >>> apply_fn, params = build(width=32, depth=3, activation="tanh")
      >>> [tuple(a.shape) for a in jax.tree.leaves(params)][1::2]
      [(64, 32), (32, 32), (32, 32), (32, 10)]
    """
    from flax import nnx

    from hamjax import models
    from hamjax._base import functional

    where = "tune.models.reference"
    if name not in models.MODELS:
        raise ValueError(f"tune: a width, depth or activation needs a reference model {models.MODELS}, got {name!r}")
    if "activation" in structure and name not in ACTIVATION_FIELDS:
        raise ValueError(
            f"{where}: reference model {name!r} has no activation to choose (only the "
            f"{', '.join(ACTIVATION_FIELDS)} config has one); it can vary width and depth"
        )
    shape = {"input_shape": dataset.input_shape, "num_classes": dataset.num_classes}
    default = models.config_of(nnx.eval_shape(lambda: models.build(name, seed=seed, **shape)))  # nothing computed
    hidden = default.sizes[1:-1] if name == "mlp" else getattr(default, "dense", ())  # the layers depth repeats

    def build(width=None, depth=None, activation=None):
        fields = {}
        if name in ("mlp", "cnn"):
            layers = hidden
            if depth is not None:
                depth = check_int(where, "depth", depth, minimum=1)
                layers = (*hidden[:depth], *[hidden[-1]] * (depth - len(hidden)))
            if width is not None:
                layers = (check_int(where, "width", width, minimum=1),) * len(layers)
            if layers != hidden:  # MLP sizes: input, hidden..., classes
                fields[WIDTH_FIELDS[name]] = (default.sizes[0], *layers, default.sizes[-1]) if name == "mlp" else layers
        else:
            if depth is not None:
                fields[DEPTH_FIELDS[name]] = check_int(where, "depth", depth, minimum=1)
            if width is not None:
                fields[WIDTH_FIELDS[name]] = check_int(where, "width", width, minimum=1)
        if activation is not None:
            fields["activation"] = check_choice(where, "activation", activation, tuple(ACTIVATIONS))
        return functional(models.build(name, seed=seed, **shape, **fields))

    if name in ACTIVATION_FIELDS:
        return build

    def build_without_activation(width=None, depth=None):
        return build(width=width, depth=depth)

    return build_without_activation
