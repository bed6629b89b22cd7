"""Search: populations trained in one compiled call, selection, evolution and architecture search.

* :mod:`hamjax.search.population`: a population is a pytree with a leading
  member axis; :class:`~hamjax.search.population.Population` (from
  :mod:`hamjax.search.trainer`) trains and evaluates every member at once,
  with per-member hyperparameters; population-based training.
* :mod:`hamjax.search.selection`: tournament, roulette, rank and elitism on
  fitness arrays, pure and jittable.
* :mod:`hamjax.search.space`: search spaces of ``Int``, ``Float`` and
  ``Choice`` genes (:mod:`hamjax.search.genes`), and genome batches, laid
  out as matrices by :mod:`hamjax.search.encoding`.
* :mod:`hamjax.search.evolution`: mutation, crossover and
  population-based training's exploit/explore over genome batches.
* :mod:`hamjax.search.nas`: architectures as genomes, trained as masked
  sub-networks of one supernet (:mod:`hamjax.search.supernet`) and
  materialised as small models.
* :mod:`hamjax.search.pareto`: Pareto fronts and non-dominated ranks over
  accuracy and any number of costs.
* :mod:`hamjax.search.engine` (imported on its own): whole architecture
  searches, random, evolutionary or Bayesian (:mod:`hamjax.search.proposals`),
  checkpointed and resumable.
"""

from hamjax.search import encoding, evolution, genes, nas, pareto, population, selection, space, supernet, trainer

__all__ = ["encoding", "evolution", "genes", "nas", "pareto", "population", "selection", "space", "supernet", "trainer"]
