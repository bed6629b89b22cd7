"""Autotune: choose the compression recipe for a model under constraints.

Every candidate is a recipe (the TOML schema of :mod:`hamjax.recipes`);
strategies (rules, Monte-Carlo tree search, their hybrid, random and an
Optuna sampler as baselines) propose candidates, each is measured on the
validation split and in onnxruntime, and a knowledge base keyed by the
model's signature remembers what worked.
"""

from hamjax.autotune.knowledge import ImportReport, KnowledgeBase, KnowledgeBaseError, Record, recipe_key
from hamjax.autotune.mcts import MCTS
from hamjax.autotune.objective import Constraints, Measured, Weights
from hamjax.autotune.sensitivity import Sensitivity, layer_ablation, layer_sensitivity
from hamjax.autotune.signature import Signature, model_signature, similarity
from hamjax.autotune.space import RecipeSpace
from hamjax.autotune.strategies import Evaluation, Exhausted, History

__all__ = [
    "MCTS",
    "Constraints",
    "Evaluation",
    "Exhausted",
    "History",
    "ImportReport",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "Measured",
    "RecipeSpace",
    "Record",
    "Sensitivity",
    "Signature",
    "Weights",
    "layer_ablation",
    "layer_sensitivity",
    "model_signature",
    "recipe_key",
    "similarity",
]
