"""Graph transforms on any model of the contract, through its jaxpr.

Each transform takes ``(apply_fn, params)`` and returns a new pair (or
transforms the params), works on Flax NNX, Linen and plain ``jax.numpy``
models, composes with pruning, quantization and distillation, and exports
to ONNX.
"""

__all__ = []
