"""Monte-Carlo tree search over a recipe space's decision sequence.

The tree's levels are the decisions of :class:`hamjax.autotune.space.RecipeSpace`
(which steps, then each step's fields); a path from the root to a leaf is a
recipe. One proposal is one descent:

* **selection**: at a discrete decision, the child maximising PUCT
  ``Q + c_puct * P * sqrt(N) / (1 + n)`` with ``P`` the rules' prior
  (:class:`hamjax.autotune.rules.Priors`), or, without priors, UCT
  ``Q + c_uct * sqrt(ln N / n)`` with unvisited children first. ``Q`` is
  ``(1 - greed) * mean + greed * best`` of the child's rewards (a search
  for one best recipe cares about the best below a node, not only the
  average), rescaled to [0, 1] by the lowest and highest rewards seen; an
  unvisited child under PUCT counts its parent's. Closed subtrees (every
  recipe below evaluated) are skipped.
* **progressive widening** at a continuous decision: while the node has
  fewer children than ``ceil(widen * N ** alpha)``, a new value is drawn:
  around the best child's value (a normal of shrinking width), else around a
  prior's centre, else uniformly in the range.
* **expansion and rollout**: the first decision that leaves the tree is the
  new branch; the rest of the recipe is drawn from the priors (uniformly
  without them).
* **backpropagation**: :meth:`MCTS.observe` walks the evaluated recipe's
  full decision path, creating the nodes it lacks, and adds its reward to
  every node on it, so recipes proposed by others (rules, the knowledge
  base, an ensemble's other strategies) teach the tree too.

Rewards are :func:`hamjax.autotune.objective.penalised` scores: infeasible
candidates lose in proportion to how far they break their constraints. Given
its seed, a search is deterministic.

References:
  Kocsis & Szepesvari, "Bandit based Monte-Carlo planning", ECML 2006 (UCT);
  Silver et al., "Mastering the game of Go without human knowledge", Nature 2017 (PUCT);
  Couetoux et al., "Continuous upper confidence trees", LION 2011 (progressive widening).

Examples:
  >>> from hamjax.autotune.mcts import MCTS
  >>> from hamjax.autotune.space import RecipeSpace
  >>> search = MCTS(RecipeSpace("mlp", steps=("prune", "quantize")), seed=0)
  >>> recipe, reason = search.propose(set())
  >>> search.observe(recipe, 0.3)
  >>> search.root.visits, reason.startswith("tree search (UCT")
  (1, True)
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any

import numpy as np

from hamjax import recipes
from hamjax._checks import check_int, check_number
from hamjax.autotune import space as space_mod
from hamjax.autotune.rules import Priors
from hamjax.autotune.space import Decision, RecipeSpace

__all__ = ["MCTS", "Node"]


class Node:
    """One node of the tree: the decision taken next, the children by value, visits and total reward.

    Attributes:
      taken: the ``(name, value)`` decisions from the root to this node.
      decision: the :class:`~hamjax.autotune.space.Decision` taken here, or ``None`` at a leaf (a full recipe).
      children: ``{value: Node}``.
      visits, total, best: how many rewards passed through, their sum and the highest.
      closed: every recipe below was evaluated (a leaf once evaluated; a
        discrete decision once all its children are closed; a continuous one never).
    """

    def __init__(self, taken: tuple, decision: Decision | None):
        self.taken = taken
        self.decision = decision
        self.children: dict[Any, Node] = {}
        self.visits = 0
        self.total = 0.0
        self.best = -math.inf
        self.closed = False

    @property
    def mean(self) -> float:
        """The mean reward through this node (0 before any)."""
        return self.total / self.visits if self.visits else 0.0


class MCTS:
    """A tree search over one :class:`~hamjax.autotune.space.RecipeSpace` (see the module docstring).

    Args:
      space: the recipe space.
      priors: :class:`~hamjax.autotune.rules.Priors` for PUCT, or ``None`` (or empty) for UCT.
      seed: the seed of the search's ``numpy`` generator.
      c_puct, c_uct: the exploration constants.
      widen, alpha: progressive widening allows ``ceil(widen * visits ** alpha)`` values per continuous decision.
      greed: the weight of a node's best reward against its mean in ``Q``, in [0, 1].

    Raises:
      ValueError: a non-positive constant, ``alpha`` outside (0, 1), ``greed`` outside [0, 1] or a bad seed.
    """

    def __init__(
        self,
        space: RecipeSpace,
        priors: Priors | None = None,
        *,
        seed: int = 0,
        c_puct: float = 1.5,
        c_uct: float = 0.7,
        widen: float = 1.0,
        alpha: float = 0.5,
        greed: float = 0.5,
    ):
        self.space = space
        self.priors = priors if priors else None
        for name, value in (("c_puct", c_puct), ("c_uct", c_uct), ("widen", widen)):
            check_number("MCTS", name, value, minimum=0, exclusive_minimum=True)
        check_number("MCTS", "alpha", alpha, minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
        self.greed = check_number("MCTS", "greed", greed, minimum=0, maximum=1)
        self.c_puct, self.c_uct, self.widen, self.alpha = float(c_puct), float(c_uct), float(widen), float(alpha)
        self.rng = np.random.default_rng(check_int("MCTS", "seed", seed, minimum=0))
        self.root = Node((), space.next_decision(()))
        self.low, self.high = math.inf, -math.inf
        self.rewards: dict[str, float] = {}

    @property
    def rule(self) -> str:
        """``"PUCT"`` with priors, else ``"UCT"``."""
        return "PUCT" if self.priors else "UCT"

    def _q(self, node: Node, fallback: float) -> float:
        if not node.visits:
            return fallback
        if self.high <= self.low:
            return 0.5
        value = (1 - self.greed) * node.mean + self.greed * node.best
        return (value - self.low) / (self.high - self.low)

    def _prior(self, node: Node, values: list) -> np.ndarray:
        decision = node.decision
        if self.priors is None:
            return np.full(len(values), 1.0 / len(values))
        if not decision.continuous:
            probs = self.priors.probabilities(node.taken, decision)
            return np.array([probs[decision.choices.index(v)] for v in values])
        centres = self.priors.centres(node.taken, decision)
        width = 0.1 * (decision.high - decision.low)
        density = np.array([0.2 + sum(w * math.exp(-(((v - c) / width) ** 2) / 2) for c, w in centres) for v in values])
        return density / density.sum()

    def _select(self, node: Node, values: list):
        """The value to follow at ``node`` among ``values`` (children or not yet)."""
        prior = self._prior(node, values)
        parent_q = self._q(node, 0.5)
        best, best_value = -math.inf, None
        for p, value in zip(prior, values, strict=True):
            child = node.children.get(value)
            n = child.visits if child is not None else 0
            if self.priors is not None:
                score = self._q(child, parent_q) if child is not None else parent_q
                score += self.c_puct * p * math.sqrt(max(node.visits, 1)) / (1 + n)
            elif n == 0:
                score = math.inf
            else:
                score = self._q(child, 0.5) + self.c_uct * math.sqrt(math.log(max(node.visits, 1)) / n)
            score += 1e-9 * self.rng.random()  # ties broken at random, reproducibly
            if score > best:
                best, best_value = score, value
        return best_value

    def _new_value(self, node: Node):
        """A new value for a continuous decision: near the best child, a prior's centre, or uniform."""
        decision = node.decision
        span = decision.high - decision.low
        visited = [(c.mean, v) for v, c in node.children.items() if c.visits]
        centres = self.priors.centres(node.taken, decision) if self.priors else []
        if visited and self.rng.random() < 0.7:
            best = max(visited)[1]
            return decision.clip(self.rng.normal(best, span * 0.25 / math.sqrt(len(visited))))
        if centres and self.rng.random() < 0.7:
            weights = np.array([w for _, w in centres])
            centre = centres[int(self.rng.choice(len(centres), p=weights / weights.sum()))][0]
            return decision.clip(self.rng.normal(centre, span * 0.1))
        return decision.uniform(self.rng)

    def _rollout_value(self, taken: tuple, decision: Decision):
        if decision.continuous:
            centres = self.priors.centres(taken, decision) if self.priors else []
            if centres and self.rng.random() < 0.7:
                weights = np.array([w for _, w in centres])
                centre = centres[int(self.rng.choice(len(centres), p=weights / weights.sum()))][0]
                return decision.clip(self.rng.normal(centre, (decision.high - decision.low) * 0.1))
            return decision.uniform(self.rng)
        if self.priors is None:
            return decision.uniform(self.rng)
        probs = self.priors.probabilities(taken, decision)
        return decision.choices[int(self.rng.choice(len(probs), p=probs))]

    def _descend(self) -> tuple[tuple, str]:
        node, note = self.root, ""
        while node.decision is not None:
            decision = node.decision
            open_ = [v for v, child in node.children.items() if not child.closed]
            if decision.continuous:
                limit = math.ceil(self.widen * max(node.visits, 1) ** self.alpha)
                if len(node.children) < limit or not open_:
                    value = self._new_value(node)
                    for _ in range(8):  # every value so far is closed: look elsewhere in the range
                        if value not in node.children or not node.children[value].closed:
                            break
                        value = decision.uniform(self.rng)
                    if value not in node.children:
                        note = f"widened {decision.name} to {value:g} ({len(node.children) + 1} values)"
                        break
                else:
                    value = self._select(node, open_)
            else:
                value = self._select(node, [c for c in decision.choices if c not in node.children or c in open_])
                if value not in node.children:
                    note = f"new branch {decision.name}={value!r}"
                    break
            node = node.children[value]
        if node.decision is None:
            return node.taken, note or "followed the best leaf"
        taken = (*node.taken, (node.decision.name, value))
        while (decision := self.space.next_decision(taken)) is not None:
            taken = (*taken, (decision.name, self._rollout_value(taken, decision)))
        return taken, note

    def propose(self, exclude: Container[str], tries: int = 64) -> tuple[recipes.Recipe, str] | None:
        """A recipe whose key is not in ``exclude``, and the reason, or ``None`` after ``tries`` descents.

        Descents skip closed subtrees (every recipe below evaluated); one
        that still ends on an excluded recipe (proposed elsewhere, not yet
        observed) is tried again.

        Args:
          exclude: keys (:func:`hamjax.autotune.space.key`) of recipes already evaluated or proposed.
          tries: descents before giving up.

        Returns:
          ``(recipe, reason)``, or ``None``.
        """
        for _ in range(tries):
            taken, note = self._descend()
            recipe = self.space.build(taken)
            key = space_mod.key(recipe)
            if key not in exclude:
                best = max(self.rewards.values(), default=None)
                known = (
                    f"{len(self.rewards)} recipes observed, best reward {best:.3f}"
                    if best is not None
                    else "no reward yet"
                )
                return (
                    recipe,
                    f"tree search ({self.rule}{' with rules/knowledge priors' if self.priors else ''}; {known}): {note}",
                )
        return None

    def observe(self, recipe: recipes.Recipe, reward: float) -> None:
        """Add an evaluated recipe's reward along its decision path (nodes are created as needed).

        Args:
          recipe: the recipe; one outside the space (:meth:`RecipeSpace.contains`) is ignored.
          reward: its reward, a finite float (higher is better).
        """
        reward = check_number("MCTS.observe", "reward", reward)
        try:
            taken = self.space.fields(recipe)
        except ValueError:
            return
        self.rewards[space_mod.key(recipe)] = reward
        self._backup(taken, reward)

    def _backup(self, taken: tuple, reward: float) -> None:
        self.low, self.high = min(self.low, reward), max(self.high, reward)
        node = self.root
        path = [node]
        for i, (_, value) in enumerate(taken):
            child = node.children.get(value)
            if child is None:
                prefix = taken[: i + 1]
                child = node.children[value] = Node(prefix, self.space.next_decision(prefix))
            path.append(child)
            node = child
        for node in reversed(path):
            node.visits += 1
            node.total += reward
            node.best = max(node.best, reward)
            decision = node.decision
            if decision is None:
                node.closed = True  # an evaluated recipe
            elif not decision.continuous:
                node.closed = all(c in node.children and node.children[c].closed for c in decision.choices)
