"""The one cross-entropy of the library, below every layer that trains.

Training (:mod:`hamjax.train`), the search trainer and distillation all score
labels with :func:`cross_entropy`; it lives in the core so that the engine does
not import the distillation family (whose student training imports the
engine). :mod:`hamjax.distill` re-exports it as ``hamjax.distill.cross_entropy``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels) -> jax.Array:
    """Mean softmax cross-entropy of ``logits`` against integer ``labels`` or probability rows, in float32.

    ``loss = -mean_rows sum_c target_c log softmax(logits)_c``, the target
    being the one-hot row of an integer label, or a floating ``labels`` row
    of the same shape as ``logits`` (smoothed labels, mixup and cutmix
    targets: :mod:`hamjax.augment`). Which one is decided by the dtype and
    rank, statically. Nothing is checked, so that this stays the cheapest call
    in a training step: :func:`hamjax.distill.distillation_loss` checks its
    labels before using it.

    Args:
      logits: ``(..., C)`` floating array.
      labels: integer class indices in ``[0, C)`` of shape ``(...)``, or
        floating probability rows of shape ``(..., C)``.

    Returns:
      A float32 scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.distill import cross_entropy
      >>> round(float(cross_entropy(jnp.array([[0.0, 0.0], [2.0, 0.0]]), jnp.array([0, 0]))), 4)
      0.41
      >>> round(float(cross_entropy(jnp.array([[0.0, 0.0], [2.0, 0.0]]), jnp.array([[1.0, 0.0], [1.0, 0.0]]))), 4)
      0.41
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.floating) and labels.ndim == logits.ndim:
        return optax.softmax_cross_entropy(logits, labels.astype(jnp.float32)).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
