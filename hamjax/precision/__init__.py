"""Mixed precision: a dtype policy, the function transform that applies it, fp16 loss scaling.

* :mod:`~hamjax.precision.policy`: :class:`Policy` (jmp-style strings such as
  ``"p=f32,c=bf16,o=f32"``), :func:`get_policy`, :func:`with_policy` and :func:`policy_of`,
  :func:`is_floating` (the leaves a policy casts).
* :mod:`~hamjax.precision.loss_scale`: :func:`dynamic_loss_scale` and
  :func:`static_loss_scale` (optax adapters), :func:`loss_scale_of`, :func:`all_finite`, and
  :func:`prepare_training`, which sets a model and optimizer up for both.

References:
  Micikevicius et al., "Mixed Precision Training", ICLR 2018.
  https://arxiv.org/abs/1710.03740 ; jmp (https://github.com/google-deepmind/jmp).
"""

from hamjax.precision.loss_scale import (
    LOSS_SCALES,
    DynamicLossScaleState,
    all_finite,
    dynamic_loss_scale,
    loss_scale_of,
    prepare_training,
    static_loss_scale,
)
from hamjax.precision.policy import Policy, get_policy, is_floating, policy_of, with_policy

__all__ = [
    "LOSS_SCALES",
    "DynamicLossScaleState",
    "Policy",
    "all_finite",
    "dynamic_loss_scale",
    "get_policy",
    "is_floating",
    "loss_scale_of",
    "policy_of",
    "prepare_training",
    "static_loss_scale",
    "with_policy",
]
