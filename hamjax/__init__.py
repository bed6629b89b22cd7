"""hamjax: make neural networks smaller and faster in JAX.

Every optimization is a pure function over a params pytree or an apply
function, so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.
A model is a pair ``(apply_fn, params)``; see :func:`functional`.

``import hamjax`` gives the contract, :func:`fit`, :func:`optimize` and the
family namespaces. The parts that pull in heavy backends load on first
use: ``hamjax.export`` (onnx, onnxruntime, jax2onnx), ``hamjax.search`` and
``hamjax.tune`` (optuna, when a study is asked for) and ``hamjax.autotune``
(the recipe chosen under constraints: :func:`hamjax.autotune.optimize_auto`);
``from hamjax import export`` works too.
"""

import importlib

from hamjax import (
    augment,
    checkpoint,
    data,
    distill,
    jaxpr,
    measure,
    models,
    parallel,
    precision,
    prune,
    quant,
    recipes,
    regularize,
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

# Subpackages whose imports are heavy: loaded by attribute access, once.
_LAZY = ("autotune", "export", "search", "tune")


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"hamjax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'hamjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ApplyFn",
    "ChainState",
    "IdentityState",
    "OptimizeResult",
    "TrainConfig",
    "Transform",
    "__version__",
    "augment",
    "autotune",
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
    "parallel",
    "precision",
    "prune",
    "quant",
    "recipes",
    "regularize",
    "report",
    "search",
    "streaming",
    "train",
    "tune",
]
