"""Autotune: choose the compression recipe for a model under constraints.

Every candidate is a recipe (the TOML schema of :mod:`hamjax.recipes`);
strategies (rules, Monte-Carlo tree search, their hybrid, random and an
Optuna sampler as baselines) propose candidates, each is measured on the
validation split and in onnxruntime, and a knowledge base keyed by the
model's signature remembers what worked.
"""

__all__ = []
