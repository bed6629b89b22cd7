"""The strategies that propose candidates: rules, tree search, their hybrid, and random and Optuna baselines.

Every strategy has a ``name``, :meth:`Strategy.propose` (a recipe of the
space that the history does not hold yet, or :class:`Exhausted`),
:meth:`Strategy.observe` (every evaluation, its own or another strategy's:
an ensemble shares one history) and ``last_reason`` (why it proposed what it
did, for the decision log). :func:`make` builds one by name:

* ``"rules"``: the knowledge base's suggestions, then the family's rules
  (:func:`hamjax.autotune.rules.suggestions`), then neighbours of the
  evaluated recipes, best first (one decision changed, a continuous one by a
  tenth of its range), until none is left;
* ``"mcts"``: :class:`hamjax.autotune.mcts.MCTS` with UCT, no priors;
* ``"hybrid"``: the rules' recipes first while they still look promising
  (until ``patience`` rule recipes in a row fail to improve on the best
  reward), then MCTS with PUCT over the rules' and knowledge base's priors
  (the tree already holding every evaluation so far), taking turns with the
  rules' refinement: a neighbour of the best evaluations;
* ``"random"``: uniform samples of the space;
* ``"optuna"``: Optuna's TPE sampler over the same decisions, define-by-run
  through ``ask``/``tell``, seeded; other strategies' evaluations join its
  study as finished trials.

Rewards are :func:`reward`: the score, penalised when infeasible.

Examples:
  >>> from hamjax.autotune import objective, strategies
  >>> from hamjax.autotune.space import RecipeSpace
  >>> space = RecipeSpace("mlp")
  >>> rules = strategies.make("rules", space, None, objective.Constraints(), objective.Weights(), seed=0)
  >>> recipe = rules.propose(strategies.History())
  >>> [s.kind for s in recipe.steps], rules.last_reason[:13]
  (['prune', 'quantize', 'export'], 'rules: dense ')
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from hamjax import recipes
from hamjax._checks import check_choice, check_int
from hamjax.autotune import objective, rules
from hamjax.autotune import space as space_mod
from hamjax.autotune.decision import storage_key
from hamjax.autotune.mcts import MCTS
from hamjax.autotune.space import RecipeSpace

__all__ = ["NAMES", "Evaluation", "Exhausted", "History", "Strategy", "make", "reward"]

NAMES = ("rules", "mcts", "hybrid", "random", "optuna")
"""The strategies :func:`make` builds."""


class Exhausted(Exception):
    """A strategy has no recipe left to propose that the history does not hold."""


class Evaluation(NamedTuple):
    """One evaluated candidate.

    Attributes:
      recipe: the :class:`hamjax.recipes.Recipe`.
      measured: its :class:`hamjax.autotune.objective.Measured`.
      score: :func:`hamjax.autotune.objective.score` against the baseline.
      violations: :func:`hamjax.autotune.objective.violations` (empty: feasible).
      fidelity: ``"cheap"`` (short finetunes) or ``"full"``.
      seconds: how long the evaluation took.
      source: the strategy that proposed it.
    """

    recipe: recipes.Recipe
    measured: objective.Measured
    score: float
    violations: tuple
    fidelity: str
    seconds: float
    source: str

    @property
    def feasible(self) -> bool:
        """Whether no constraint is broken."""
        return not self.violations


def reward(evaluation: Evaluation) -> float:
    """What searches maximise: :func:`hamjax.autotune.objective.penalised` of the score and the violations."""
    return objective.penalised(evaluation.score, evaluation.violations)


class History:
    """The evaluations so far, in order, with their recipes' keys (list-like).

    Examples:
      >>> from hamjax.autotune.strategies import History
      >>> h = History()
      >>> len(h), h.best() is None
      (0, True)
    """

    def __init__(self, evaluations: Sequence[Evaluation] = ()):
        self._items: list[Evaluation] = []
        self._by_key: dict[str, Evaluation] = {}
        for e in evaluations:
            self.append(e)

    def append(self, evaluation: Evaluation) -> None:
        """Add an evaluation (a later one of the same recipe replaces it in :meth:`get`)."""
        self._items.append(evaluation)
        self._by_key[space_mod.key(evaluation.recipe)] = evaluation

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Evaluation]:
        return iter(self._items)

    def __getitem__(self, index):
        return self._items[index]

    def __contains__(self, recipe) -> bool:
        key = recipe if isinstance(recipe, str) else space_mod.key(recipe)
        return key in self._by_key

    def keys(self) -> set[str]:
        """The keys of the recipes evaluated."""
        return set(self._by_key)

    def get(self, recipe) -> Evaluation | None:
        """The latest evaluation of ``recipe`` (a recipe or its key), or ``None``."""
        return self._by_key.get(recipe if isinstance(recipe, str) else space_mod.key(recipe))

    def best(self, feasible_only: bool = True, fidelity: str | None = None) -> Evaluation | None:
        """The evaluation with the highest score among the feasible ones (or the highest reward among all).

        Args:
          feasible_only: only feasible evaluations, by score; else all, by :func:`reward`.
          fidelity: only evaluations of this fidelity, or ``None`` for all.

        Returns:
          An :class:`Evaluation`, or ``None`` when none qualifies.
        """
        pool = [e for e in self._items if fidelity is None or e.fidelity == fidelity]
        if feasible_only:
            pool = [e for e in pool if e.feasible]
            return max(pool, key=lambda e: e.score, default=None)
        return max(pool, key=reward, default=None)


class Strategy:
    """What every strategy shares: its space, objective, seed, the keys it proposed and ``last_reason``."""

    name = ""

    def __init__(self, space: RecipeSpace, signature, constraints, weights, *, seed: int, priors=None):
        self.space, self.signature = space, signature
        self.constraints, self.weights = constraints, weights
        self.seed = check_int(f"strategies.make({self.name!r})", "seed", seed, minimum=0)
        self.priors = list(priors or [])
        self.rng = np.random.default_rng(self.seed)
        self.proposed: set[str] = set()
        self.last_reason = ""

    def _taken(self, history: History) -> set[str]:
        return history.keys() | self.proposed

    def _give(self, recipe: recipes.Recipe, reason: str) -> recipes.Recipe:
        self.proposed.add(space_mod.key(recipe))
        self.last_reason = reason
        return recipe

    def propose(self, history: History) -> recipes.Recipe:
        """A recipe not in ``history`` (nor proposed before), with ``last_reason`` set.

        Raises:
          Exhausted: when none is left.
        """
        raise NotImplementedError

    def observe(self, evaluation: Evaluation) -> None:
        """Learn from an evaluation (any strategy's)."""
        del evaluation

    def _random(self, history: History, why: str, tries: int = 1000) -> recipes.Recipe:
        taken = self._taken(history)
        for _ in range(tries):
            recipe = self.space.sample(self.rng)
            if space_mod.key(recipe) not in taken:
                return self._give(recipe, why)
        raise Exhausted(f"{self.name}: {tries} random samples of {self.space!r} were all evaluated already")


class RandomStrategy(Strategy):
    """Uniform samples of the space (the baseline)."""

    name = "random"

    def propose(self, history):
        return self._random(history, "random: a uniform sample of the space (baseline)")


class RulesStrategy(Strategy):
    """The knowledge base's and the family's recipes in order, then neighbours of the best one."""

    name = "rules"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.suggestions = rules.suggestions(self.space, self.priors, self.constraints)

    def _next_rule(self, taken: set[str]):
        for s in self.suggestions:
            if space_mod.key(s.recipe) not in taken:
                return s
        return None

    def _neighbours(self, best: Evaluation):
        """Recipes one decision away from ``best``, in the order :func:`rules.neighbour_priority` gives for its violations."""
        path = self.space.fields(best.recipe)
        found = []
        for i, (name, value) in enumerate(path):
            decision = self.space.next_decision(path[:i])
            if decision.continuous:
                step = (decision.high - decision.low) / 10
                values = [decision.clip(value + step), decision.clip(value - step)]
                if best.feasible:  # room to spare may allow a bold move: halfway to either end of the range
                    values += [decision.clip((value + decision.high) / 2), decision.clip((value + decision.low) / 2)]
                values = list(dict.fromkeys(v for v in values if v != value))
            else:
                values = [c for c in decision.choices if c != value]
            for v in values:
                given = {**dict(path), name: v}
                rank = rules.neighbour_priority(name, value, v, best.violations)
                found.append(
                    (rank, len(found), self.space.build(self.space.complete(given)), f"{name} {value!r} -> {v!r}")
                )
        return [(recipe, change) for _, _, recipe, change in sorted(found, key=lambda item: item[:2])]

    def propose(self, history):
        rule = self._next_rule(self._taken(history))
        if rule is not None:
            return self._give(rule.recipe, f"{rule.source}: {rule.reason}")
        found = self._refine(history, self._taken(history))
        if found is None:
            raise Exhausted("rules: every rule and every neighbour of an evaluated recipe was evaluated")
        return self._give(*found)

    def _refine(self, history: History, taken: set[str]):
        """``(recipe, reason)``: the first neighbour not in ``taken`` of the evaluations, best first; or ``None``."""
        ranked = sorted(history, key=lambda e: (e.feasible, reward(e)), reverse=True)
        for rank, evaluation in enumerate(ranked):
            if not self.space.contains(evaluation.recipe):
                continue
            for recipe, change in self._neighbours(evaluation):
                if space_mod.key(recipe) not in taken:
                    which = "the best so far" if rank == 0 else f"the number {rank + 1} so far"
                    return recipe, f"rules: a neighbour of {which} ({change})"
        return None


SIZE_LIMITS = ("min_size_reduction", "max_size_bytes")
"""The violations a recipe's storage decides (:func:`hamjax.autotune.decision.storage_key`)."""

SIZE_SKIPS = 16
"""Tree proposals a search may pass over per call because a recipe of the same stored size broke a size limit."""


class MCTSStrategy(Strategy):
    """Tree search (:class:`hamjax.autotune.mcts.MCTS`): UCT without priors; the hybrid gives it priors."""

    name = "mcts"

    def __init__(self, *args, search_priors=None, **kw):
        super().__init__(*args, **kw)
        self.search = MCTS(self.space, search_priors, seed=self.seed)

    def observe(self, evaluation):
        self.search.observe(evaluation.recipe, reward(evaluation))

    def propose(self, history):
        too_large = {storage_key(e.recipe): e for e in history if any(v.startswith(SIZE_LIMITS) for v in e.violations)}
        excluded = set(self._taken(history))
        for _ in range(SIZE_SKIPS):
            found = self.search.propose(excluded)
            if found is None:
                break
            twin = too_large.get(storage_key(found[0]))
            if twin is None:
                return self._give(*found)
            # the same stored size as a recipe that broke a size limit: learnt without running it
            excluded.add(space_mod.key(found[0]))
            self.search.observe(found[0], reward(twin))
        return self._random(history, f"{self.name}: the tree kept finding evaluated recipes; a random sample")


class HybridStrategy(MCTSStrategy):
    """Rules first while they improve the best reward, then PUCT tree search with the rules as priors,
    taking turns with the rules' refinement (a neighbour of the best evaluations)."""

    name = "hybrid"

    def __init__(self, *args, patience: int = 2, **kw):
        space, priors = args[0], kw.get("priors")
        super().__init__(*args, search_priors=rules.priors_for(space, priors), **kw)
        self.rules = RulesStrategy(*args, **kw)
        self.rule_keys = {space_mod.key(s.recipe) for s in self.rules.suggestions}
        self.patience = check_int("strategies.make('hybrid')", "patience", patience, minimum=1)
        self.misses, self.best, self.turn = 0, -math.inf, 0

    def observe(self, evaluation):
        value = reward(evaluation)
        if space_mod.key(evaluation.recipe) in self.rule_keys:
            self.misses = 0 if value > self.best + 1e-9 else self.misses + 1
        self.best = max(self.best, value)
        super().observe(evaluation)

    def propose(self, history):
        if self.misses < self.patience:
            rule = self.rules._next_rule(self._taken(history))
            if rule is not None:
                return self._give(rule.recipe, f"{rule.source}: {rule.reason}")
        self.turn += 1
        if self.turn % 2 == 0:
            found = self.rules._refine(history, self._taken(history))
            if found is not None:
                return self._give(*found)
        return super().propose(history)


class OptunaStrategy(Strategy):
    """Optuna's TPE sampler over the space's decisions, define-by-run with ``ask``/``tell`` (seeded)."""

    name = "optuna"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        sampler = optuna.samplers.TPESampler(seed=self.seed)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.pending: dict[str, object] = {}
        self.told: set[str] = set()

    def _distribution(self, decision):
        d = self._optuna.distributions
        if decision.continuous:
            return d.FloatDistribution(decision.low, decision.high, step=decision.resolution)
        return d.CategoricalDistribution(decision.choices)

    @staticmethod
    def _param(decision) -> str:
        """The Optuna parameter of a decision: a categorical one is named with its choices, because a
        decision's choices may depend on earlier ones (a merging recipe prunes by other methods) and
        Optuna refuses one name with two value spaces."""
        if decision.continuous:
            return decision.name
        return f"{decision.name}[{','.join(map(str, decision.choices))}]"

    def _walk(self, trial) -> tuple:
        taken: tuple = ()
        while (decision := self.space.next_decision(taken)) is not None:
            if decision.continuous:
                step = decision.resolution
                value = decision.clip(trial.suggest_float(decision.name, decision.low, decision.high, step=step))
            elif len(decision.choices) == 1:
                value = decision.choices[0]  # forced: not a parameter, so its choices never change
            else:
                value = trial.suggest_categorical(self._param(decision), decision.choices)
            taken = (*taken, (decision.name, value))
        return taken

    def propose(self, history):
        taken_keys = self._taken(history)
        for _ in range(200):
            trial = self.study.ask()
            recipe = self.space.build(self._walk(trial))
            key = space_mod.key(recipe)
            if key not in taken_keys:
                self.pending[key] = trial
                return self._give(recipe, f"optuna: TPE trial {trial.number} over the same space (baseline)")
            known = history.get(key)
            state = self._optuna.trial.TrialState
            if known is not None:
                self.study.tell(trial, reward(known))
            else:
                self.study.tell(trial, state=state.FAIL)
        raise Exhausted("optuna: 200 trials in a row proposed recipes already evaluated")

    def observe(self, evaluation):
        key = space_mod.key(evaluation.recipe)
        if key in self.told:
            return
        self.told.add(key)
        value = reward(evaluation)
        if key in self.pending:
            self.study.tell(self.pending.pop(key), value)
            return
        try:
            path = self.space.fields(evaluation.recipe)
        except ValueError:
            return
        decisions = [self.space.next_decision(path[:i]) for i in range(len(path))]
        kept = [(v, d) for (_, v), d in zip(path, decisions, strict=True) if d.continuous or len(d.choices) > 1]
        params = {self._param(d): v for v, d in kept}
        dists = {self._param(d): self._distribution(d) for _, d in kept}
        trial = self._optuna.trial.create_trial(
            params=params, distributions=dists, value=value, user_attrs={"source": evaluation.source}
        )
        self.study.add_trial(trial)


_CLASSES = {c.name: c for c in (RulesStrategy, MCTSStrategy, HybridStrategy, RandomStrategy, OptunaStrategy)}


def make(
    name: str, space: RecipeSpace, signature, constraints, weights, *, seed: int, priors=None, **options
) -> Strategy:
    """A strategy by name.

    Args:
      name: one of :data:`NAMES`.
      space: the :class:`~hamjax.autotune.space.RecipeSpace`.
      signature: the model's signature (kept for the decision log).
      constraints, weights: the :class:`~hamjax.autotune.objective.Constraints` and
        :class:`~hamjax.autotune.objective.Weights` (rewards come scored and checked in the evaluations).
      seed: an integer >= 0; equal seeds propose equal sequences given equal evaluations.
      priors: ``(raw recipe dict, weight, reason)`` from the knowledge base, or ``None``.
      **options: ``patience`` for the hybrid.

    Returns:
      A :class:`Strategy`.

    Raises:
      ValueError: an unknown name or a bad seed.

    Examples:
      >>> from hamjax.autotune import objective, strategies
      >>> from hamjax.autotune.space import RecipeSpace
      >>> s = strategies.make("hybrid", RecipeSpace("cnn"), None, objective.Constraints(), objective.Weights(), seed=1)
      >>> s.name
      'hybrid'
    """
    check_choice("strategies.make", "name", name, NAMES)
    return _CLASSES[name](space, signature, constraints, weights, seed=seed, priors=priors, **options)
