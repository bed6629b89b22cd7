"""hamjax: make neural networks smaller and faster in JAX.

Every optimization is a pure function over a params pytree or an apply
function, so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.
A model is a pair ``(apply_fn, params)``; see :func:`functional`.
"""

from hamjax import (
    checkpoint,
    data,
    distill,
    export,
    jaxpr,
    measure,
    models,
    precision,
    prune,
    quant,
    recipes,
    report,
    streaming,
    train,
)
from hamjax._base import (
    ApplyFn,
    ChainState,
    IdentityState,
    Transform,
    call_model,
    chain,
    functional,
    identity,
    linen_functional,
)
from hamjax.pipeline import OptimizeResult, optimize
from hamjax.train import TrainConfig, fit

__version__ = "0.1.0"

__all__ = [
    "ApplyFn",
    "ChainState",
    "IdentityState",
    "OptimizeResult",
    "TrainConfig",
    "Transform",
    "__version__",
    "call_model",
    "chain",
    "checkpoint",
    "data",
    "distill",
    "export",
    "fit",
    "functional",
    "identity",
    "jaxpr",
    "linen_functional",
    "measure",
    "models",
    "optimize",
    "precision",
    "prune",
    "quant",
    "recipes",
    "report",
    "streaming",
    "train",
]
