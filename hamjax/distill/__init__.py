"""Knowledge distillation: a student learns from a teacher's outputs, features or relations.

Modules, bottom to top:

* :mod:`~hamjax.distill.losses`: losses on outputs (:func:`soft_target_loss`,
  :func:`distillation_loss`, :func:`multi_teacher_loss`, :func:`self_distillation_loss`) and
  :func:`cross_entropy`, the one cross-entropy of the library.
* :mod:`~hamjax.distill.features`: FitNets hints with a learned projection, attention maps and
  attention probabilities.
* :mod:`~hamjax.distill.relations`: relational KD (distances and angles between examples).
* :mod:`~hamjax.distill.teacher`: the mean teacher, :func:`ema_update` and the optax adapter
  :func:`ema_teacher`.
* :mod:`~hamjax.distill.matching`: function matching, the teacher and the student on one augmented
  view, and the regularised (dropout, jittered) teacher.
* :mod:`~hamjax.distill.terms`: the loss terms a distillation run combines.
* :mod:`~hamjax.distill.training`: :func:`fit`, which trains a student on
  :func:`hamjax.train.fit` (it sits above the training engine; nothing else here imports it).

Every loss is a pure function from arrays to a float32 scalar, with keyword-only hyperparameters
that may be traced, so ``jax.vmap`` over temperatures is one call.
"""

from hamjax.distill.features import (
    attention_map,
    attention_probs_loss,
    attention_transfer_loss,
    feature_loss,
    init_projection,
    project,
)
from hamjax.distill.losses import (
    cross_entropy,
    distillation_loss,
    ensemble_targets,
    multi_teacher_loss,
    self_distillation_loss,
    soft_target_loss,
)
from hamjax.distill.matching import TEACHER_METHODS, ViewKeys, check_view, teacher_forward, view_keys
from hamjax.distill.relations import rkd_angle_loss, rkd_distance_loss
from hamjax.distill.teacher import EmaTeacher, EmaTeacherState, ema_teacher, ema_update
from hamjax.distill.terms import (
    TERMS,
    AttentionProbs,
    AttentionTransfer,
    Features,
    HardLabels,
    Relational,
    SelfDistillation,
    SoftTargets,
)
from hamjax.distill.training import CACHES, DistillResult, fit

__all__ = [
    "CACHES",
    "TEACHER_METHODS",
    "TERMS",
    "AttentionProbs",
    "AttentionTransfer",
    "DistillResult",
    "EmaTeacher",
    "EmaTeacherState",
    "Features",
    "HardLabels",
    "Relational",
    "SelfDistillation",
    "SoftTargets",
    "ViewKeys",
    "attention_map",
    "attention_probs_loss",
    "attention_transfer_loss",
    "check_view",
    "cross_entropy",
    "distillation_loss",
    "ema_teacher",
    "ema_update",
    "ensemble_targets",
    "feature_loss",
    "fit",
    "init_projection",
    "multi_teacher_loss",
    "project",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "self_distillation_loss",
    "soft_target_loss",
    "teacher_forward",
    "view_keys",
]
