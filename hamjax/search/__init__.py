"""Search: populations trained in one compiled call, selection, evolution and architecture search.

* :mod:`hamjax.search.population`: a population is a pytree with a leading
  member axis; :class:`~hamjax.search.population.Population` trains and
  evaluates every member at once, with per-member hyperparameters.
* :mod:`hamjax.search.selection`: tournament, roulette, rank and elitism on
  fitness arrays, pure and jittable.
* :mod:`hamjax.search.space`: search spaces of ``Int``, ``Float`` and
  ``Choice`` genes, and genome batches.
* :mod:`hamjax.search.evolution`: mutation, crossover and
  population-based training's exploit/explore over genome batches.
* :mod:`hamjax.search.nas`: architectures as genomes, trained as masked
  sub-networks of one supernet and materialised as small models.
* :mod:`hamjax.search.pareto`: Pareto fronts and non-dominated ranks over
  accuracy and any number of costs.
* :mod:`hamjax.search.engine` (imported on its own): whole architecture
  searches, random, evolutionary or Bayesian, checkpointed and resumable.
"""

from hamjax.search import evolution, nas, pareto, population, selection, space

__all__ = ["evolution", "nas", "pareto", "population", "selection", "space"]
