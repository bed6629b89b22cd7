"""What a distillation run compares: loss terms, small frozen dataclasses with a weight each.

:func:`hamjax.distill.fit` minimises ``sum(term.weight * term.loss(inputs))`` over its ``terms``:

* :class:`SoftTargets` (Hinton et al. 2015; with several teachers, their weighted ensemble) and
  :class:`HardLabels`, on the logits;
* :class:`Features` (FitNets hints, with a learned projection when the widths differ),
  :class:`AttentionTransfer` (Zagoruyko & Komodakis), :class:`AttentionProbs` (transformer
  attention maps) and :class:`Relational` (Park et al. 2019), on named intermediates
  (:func:`hamjax.jaxpr.capture`) of the student and of one teacher: these are :class:`PairTerm`;
* :class:`SelfDistillation`: shallow exits of the student learn from its own final layer
  (Zhang et al. 2019), with no teacher.

Fields are checked when a term is built, so a bad weight fails before any training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from hamjax._checks import check_int, check_number, check_positive
from hamjax.distill.features import (
    attention_probs_loss,
    attention_transfer_loss,
    feature_loss,
    init_projection,
    project,
)
from hamjax.distill.losses import cross_entropy, multi_teacher_loss, self_distillation_loss, soft_target_loss
from hamjax.distill.relations import rkd_angle_loss, rkd_distance_loss

__all__ = [
    "TERMS",
    "AttentionProbs",
    "AttentionTransfer",
    "Features",
    "HardLabels",
    "PairTerm",
    "Relational",
    "SelfDistillation",
    "SoftTargets",
    "TermInputs",
]


def _check_weight(term, arg: str = "weight") -> None:
    check_number(type(term).__name__, arg, getattr(term, arg), minimum=0)


class TermInputs(NamedTuple):
    """What a term's ``loss`` reads, for one batch.

    Attributes:
      logits: the student's ``(N, C)`` logits.
      taps: the student's named intermediates, ``{name: array}``.
      teacher_logits: one ``(N, C)`` array per teacher.
      teacher_taps: one ``{name: array}`` per teacher.
      labels: the ``(N,)`` integer labels, or ``(N, C)`` probability rows when the view is mixed
        (``fit``'s ``mixup``, or the config's mixup or cutmix).
      adapter: this term's learned params (a projection, exit heads), or ``None``.
      teacher_weights: the teachers' ensemble weights, or ``None`` for equal weights.
    """

    logits: jax.Array
    taps: dict
    teacher_logits: list
    teacher_taps: list
    labels: jax.Array
    adapter: Any
    teacher_weights: Any


@dataclasses.dataclass(frozen=True)
class SoftTargets:
    """Hinton's soft targets: ``weight * T^2 KL(teacher_T || student_T)`` (:func:`hamjax.distill.soft_target_loss`).

    With several teachers the target is their ensemble, weighted by ``fit``'s
    ``teacher_weights`` (:func:`hamjax.distill.multi_teacher_loss`).

    Args:
      temperature: ``T > 0``.
      weight: the term's weight, >= 0.

    Examples:
      >>> from hamjax.distill import SoftTargets
      >>> SoftTargets(temperature=2.0).weight
      0.9
    """

    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self):
        check_positive("SoftTargets", "temperature", self.temperature)
        _check_weight(self)

    def loss(self, inputs: TermInputs) -> jax.Array:
        """The soft-target loss of the student's logits against the teacher (or the ensemble)."""
        if len(inputs.teacher_logits) == 1:
            return soft_target_loss(inputs.logits, inputs.teacher_logits[0], temperature=self.temperature)
        return multi_teacher_loss(
            inputs.logits, inputs.teacher_logits, temperature=self.temperature, weights=inputs.teacher_weights
        )


@dataclasses.dataclass(frozen=True)
class HardLabels:
    """The student's own cross-entropy on the labels (:func:`hamjax.distill.cross_entropy`), times ``weight``.

    Args:
      weight: the term's weight, >= 0.

    Examples:
      >>> from hamjax.distill import HardLabels
      >>> HardLabels(0.1).weight
      0.1
    """

    weight: float = 0.1

    def __post_init__(self):
        _check_weight(self)

    def loss(self, inputs: TermInputs) -> jax.Array:
        """The cross-entropy of the student's logits on the labels."""
        return cross_entropy(inputs.logits, inputs.labels)


@dataclasses.dataclass(frozen=True)
class PairTerm:
    """A term comparing the student's intermediate ``student`` with teacher ``teacher_index``'s ``teacher``."""

    student: str
    teacher: str
    weight: float = 1.0
    teacher_index: int = 0

    def __post_init__(self):
        where = type(self).__name__
        for arg in ("student", "teacher"):
            if not isinstance(getattr(self, arg), str):
                raise ValueError(f"{where}: {arg} must be an intermediate name (a string), got {getattr(self, arg)!r}")
        _check_weight(self)
        check_int(where, "teacher_index", self.teacher_index, minimum=0)

    def pair(self, inputs: TermInputs) -> tuple[jax.Array, jax.Array]:
        """The student's and the teacher's intermediates this term compares."""
        return inputs.taps[self.student], inputs.teacher_taps[self.teacher_index][self.teacher]


@dataclasses.dataclass(frozen=True)
class Features(PairTerm):
    """FitNets hint: MSE between the student's and the teacher's features (:func:`hamjax.distill.feature_loss`).

    When the last axes differ, a linear projection of the student's features (an adapter) is
    learned with the student.

    Args:
      student, teacher: the intermediates' names.
      weight: the term's weight, >= 0.
      teacher_index: which teacher.
      normalize: compare L2-normalised features.

    Examples:
      >>> from hamjax.distill import Features
      >>> Features("hidden/1", "hidden/1").teacher_index
      0
    """

    normalize: bool = False

    def init(self, key, student: jax.ShapeDtypeStruct, teacher: jax.ShapeDtypeStruct):
        """The projection's params when the widths differ, else ``None``."""
        if student.shape[:-1] != teacher.shape[:-1]:
            raise ValueError(
                f"Features({self.student!r}, {self.teacher!r}): student shape {student.shape} and teacher shape "
                f"{teacher.shape} differ before the last axis; only the feature width may differ"
            )
        if student.shape[-1] == teacher.shape[-1]:
            return None
        return init_projection(key, student.shape[-1], teacher.shape[-1])

    def loss(self, inputs: TermInputs) -> jax.Array:
        """The hint loss, through the projection if there is one."""
        s, t = self.pair(inputs)
        return feature_loss(s, t, projection=inputs.adapter, normalize=self.normalize)


@dataclasses.dataclass(frozen=True)
class AttentionTransfer(PairTerm):
    """Spatial attention transfer (:func:`hamjax.distill.attention_transfer_loss`) on feature maps or tokens.

    Args:
      student, teacher: the intermediates' names.
      weight: the term's weight, >= 0 (the authors' ``beta = 1e3``).
      teacher_index: which teacher.
      p: the power of :func:`hamjax.distill.attention_map`.

    Examples:
      >>> from hamjax.distill import AttentionTransfer
      >>> AttentionTransfer("blocks/0", "blocks/0").weight
      1000.0
    """

    weight: float = 1000.0
    p: float = 2.0

    def loss(self, inputs: TermInputs) -> jax.Array:
        """The attention transfer loss of the two intermediates."""
        s, t = self.pair(inputs)
        return attention_transfer_loss(s, t, p=self.p)


@dataclasses.dataclass(frozen=True)
class AttentionProbs(PairTerm):
    """KL between attention probabilities ``(N, heads, T, T)`` (:func:`hamjax.distill.attention_probs_loss`).

    Args:
      student, teacher: the names of the attention probabilities.
      weight: the term's weight, >= 0.
      teacher_index: which teacher.

    Examples:
      >>> from hamjax.distill import AttentionProbs
      >>> AttentionProbs("blocks/1/attention", "blocks/1/attention").weight
      1.0
    """

    def loss(self, inputs: TermInputs) -> jax.Array:
        """The KL of the teacher's attention rows to the student's."""
        s, t = self.pair(inputs)
        return attention_probs_loss(s, t)


@dataclasses.dataclass(frozen=True)
class Relational(PairTerm):
    """Relational KD on embeddings: ``distance * RKD-D + angle * RKD-A`` (Park et al. 2019, who use 1:2).

    Args:
      student, teacher: the embeddings' names (default ``"embedding"``).
      weight: the term's weight, >= 0.
      teacher_index: which teacher.
      distance, angle: the weights of :func:`hamjax.distill.rkd_distance_loss` and
        :func:`hamjax.distill.rkd_angle_loss`, >= 0.

    Examples:
      >>> from hamjax.distill import Relational
      >>> Relational().student, Relational().angle
      ('embedding', 2.0)
    """

    student: str = "embedding"
    teacher: str = "embedding"
    distance: float = 1.0
    angle: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        _check_weight(self, "distance")
        _check_weight(self, "angle")

    def loss(self, inputs: TermInputs) -> jax.Array:
        """The weighted sum of the RKD distance and angle losses."""
        s, t = self.pair(inputs)
        return self.distance * rkd_distance_loss(s, t) + self.angle * rkd_angle_loss(s, t)


@dataclasses.dataclass(frozen=True)
class SelfDistillation:
    """Shallow exits learn from the student's final logits (:func:`hamjax.distill.self_distillation_loss`).

    Each name in ``exits`` gets an exit head (an adapter): the intermediate is averaged over its
    middle axes and mapped to the classes. The loss includes the final layer's cross-entropy, so
    it needs no :class:`HardLabels` and no teacher.

    Args:
      exits: one or more intermediate names.
      temperature: ``T > 0``.
      alpha: the distillation weight in ``[0, 1]``.
      weight: the term's weight, >= 0.

    Examples:
      >>> from hamjax.distill import SelfDistillation
      >>> SelfDistillation(exits=["features/0"]).exits
      ('features/0',)
    """

    exits: tuple[str, ...] = ()
    temperature: float = 3.0
    alpha: float = 0.5
    weight: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "exits", tuple(self.exits))
        if not self.exits or not all(isinstance(e, str) for e in self.exits):
            raise ValueError(f"SelfDistillation: exits must be one or more intermediate names, got {self.exits!r}")
        check_positive("SelfDistillation", "temperature", self.temperature)
        _check_weight(self)
        check_number("SelfDistillation", "alpha", self.alpha, minimum=0, maximum=1)

    def init(self, key, shapes: dict, num_classes: int) -> dict:
        """One exit head per name: ``{name: projection params}`` from its width to ``num_classes``."""
        keys = jax.random.split(key, len(self.exits))
        return {
            name: init_projection(k, shapes[name].shape[-1], num_classes)
            for name, k in zip(self.exits, keys, strict=True)
        }

    def exit_logits(self, inputs: TermInputs) -> list[jax.Array]:
        """Each exit's logits: its intermediate averaged over the middle axes, through its head."""
        outs = []
        for name in self.exits:
            h = inputs.taps[name]
            h = h.reshape(h.shape[0], -1, h.shape[-1]).mean(axis=1)
            outs.append(project(inputs.adapter[name], h))
        return outs

    def loss(self, inputs: TermInputs) -> jax.Array:
        """The self-distillation loss of the exits against the final logits."""
        return self_distillation_loss(
            self.exit_logits(inputs), inputs.logits, inputs.labels, temperature=self.temperature, alpha=self.alpha
        )


TERMS = (SoftTargets, HardLabels, Features, AttentionTransfer, AttentionProbs, Relational, SelfDistillation)
