"""Autotune: choose the compression recipe for a model under constraints.

Every candidate is a recipe (the TOML schema of :mod:`hamjax.recipes`);
strategies (rules, Monte-Carlo tree search, their hybrid, random and an
Optuna sampler as baselines) propose candidates, each is measured on the
validation split and in onnxruntime, and a knowledge base keyed by the
model's signature remembers what worked. :func:`optimize_auto` runs the
whole loop and returns the chosen recipe, the optimized model, the
measurements and the decision log.

* :mod:`~hamjax.autotune.signature`: the model's signature and family, from its jaxpr.
* :mod:`~hamjax.autotune.sensitivity`: accuracy drops of one layer quantized or pruned
  alone, every layer and level in one vmapped call.
* :mod:`~hamjax.autotune.objective`: constraints, weights, the score.
* :mod:`~hamjax.autotune.space`, :mod:`~hamjax.autotune.rules`, :mod:`~hamjax.autotune.mcts`,
  :mod:`~hamjax.autotune.strategies`, :mod:`~hamjax.autotune.selection`: the recipes a model
  may get, the rules table, tree search, the strategies and the ensemble's selection.
* :mod:`~hamjax.autotune.knowledge` (with ``knowledge_record``, ``knowledge_merge``,
  ``knowledge_schema``, ``knowledge_io``): the knowledge base.
* :mod:`~hamjax.autotune.evaluate`: candidates run and measured like the baseline;
  :mod:`~hamjax.autotune.run`: :func:`optimize_auto`.
"""

from hamjax.autotune.evaluate import Evaluator
from hamjax.autotune.knowledge import ImportReport, KnowledgeBase, KnowledgeBaseError, Record, recipe_key
from hamjax.autotune.mcts import MCTS
from hamjax.autotune.objective import Constraints, Measured, Weights
from hamjax.autotune.run import STRATEGIES, AutoResult, optimize_auto
from hamjax.autotune.sensitivity import Sensitivity, layer_ablation, layer_sensitivity
from hamjax.autotune.signature import Signature, model_signature, similarity
from hamjax.autotune.space import RecipeSpace
from hamjax.autotune.strategies import Evaluation, Exhausted, History

__all__ = [
    "MCTS",
    "STRATEGIES",
    "AutoResult",
    "Constraints",
    "Evaluation",
    "Evaluator",
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
    "optimize_auto",
    "recipe_key",
    "similarity",
]
