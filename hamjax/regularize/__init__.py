"""Regularizers for any model: weight penalties, spectral norms, DropConnect, adversarial examples.

* :mod:`~hamjax.regularize.penalties`: :func:`l1`, :func:`l2`, :func:`elastic_net` (loss terms
  over kernels, a filter choosing the leaves).
* :mod:`~hamjax.regularize.spectral`: :func:`spectral_penalty` (an optax transform adding the
  gradient of ``coefficient * sigma_max(W)``), :func:`spectral_normalize` (a params transform
  dividing kernels by ``sigma_max``), :func:`spectral_norms` and :class:`SpectralState`
  (power-iteration vectors).
* :mod:`~hamjax.regularize.stochastic`: :func:`drop_connect` (random weight masks).
* :mod:`~hamjax.regularize.adversarial`: :func:`fgsm`, :func:`pgd` (L-infinity attacks on
  any apply function) and :func:`robust_accuracy`.

Stochastic depth for the reference models' residual blocks is the ``drop_path`` field of
:class:`hamjax.models.ViTConfig` and :class:`hamjax.models.HAMNetConfig`.
"""

from hamjax.regularize.adversarial import fgsm, pgd, robust_accuracy
from hamjax.regularize.penalties import check_coefficient, elastic_net, l1, l2
from hamjax.regularize.spectral import SpectralState, spectral_normalize, spectral_norms, spectral_penalty
from hamjax.regularize.stochastic import drop_connect

__all__ = [
    "SpectralState",
    "check_coefficient",
    "drop_connect",
    "elastic_net",
    "fgsm",
    "l1",
    "l2",
    "pgd",
    "robust_accuracy",
    "spectral_normalize",
    "spectral_norms",
    "spectral_penalty",
]
