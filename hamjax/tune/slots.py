"""Slots: a population state whose members are trials, and the edits a batch of trials makes to it.

A :class:`Bucket` holds the members of one shape bucket in one
:class:`hamjax.search.population.PopulationState`; a slot holds a trial or
nothing (an idle member, trained but never scored). New trials are written
into free slots (:func:`scatter`); a full bucket grows by idle copies
(:func:`repeat`, :func:`concat`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax.search.population import PopulationState


class Bucket:
    """The members of one shape bucket: their state and which trial each slot holds.

    Attributes:
      batch_size: examples per step of these members.
      state: their :class:`PopulationState`, or ``None`` before the first member.
      slots: per member, the trial it trains (a dict) or ``None`` (idle).

    Examples:
      >>> bucket = Bucket(64)
      >>> bucket.slots = [None, {"trial": 3}]
      >>> bucket.live
      [1]
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.state: PopulationState | None = None
        self.slots: list[dict | None] = []

    @property
    def live(self) -> list[int]:
        """The slots that hold a trial."""
        return [i for i, m in enumerate(self.slots) if m is not None]


def stack(trees: Sequence) -> Any:
    """Pytrees stacked along a new leading member axis.

    Examples:
      >>> stack([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
      (2, 2)
    """
    return _stack(list(trees))


@jax.jit
def _stack(trees: list) -> Any:  # one program per count and shapes, not an eager stack per leaf
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _members(fn, *states: PopulationState) -> PopulationState:
    """``fn`` over the member leaves (params, optimizer states, hyperparameters); the step count of the first."""
    fields = [jax.tree.map(fn, *(getattr(s, f) for s in states)) for f in ("params", "opt_state", "hparams")]
    return PopulationState(*fields, states[0].count)


@jax.jit
def concat(a: PopulationState, b: PopulationState) -> PopulationState:
    """The members of ``a`` then those of ``b``."""
    return _members(lambda x, y: jnp.concatenate([x, y]), a, b)


@functools.partial(jax.jit, static_argnums=1)
def repeat(a: PopulationState, copies: int) -> PopulationState:
    """Each member of ``a`` repeated ``copies`` times."""
    return _members(lambda x: jnp.repeat(x, copies, axis=0), a)


def _scatter(a: PopulationState, index: jax.Array, b: PopulationState) -> PopulationState:
    return _members(lambda x, y: x.at[index].set(y, mode="drop"), a, b)


_scatter_jit = jax.jit(_scatter, donate_argnums=0)


def scatter(a: PopulationState, index: np.ndarray, b: PopulationState) -> PopulationState:
    """``a`` with the members at ``index`` replaced by those of ``b``, in order; an index out of range drops its row.

    One compiled program per shape, so a fixed-length ``index`` (padded with
    out-of-range entries) refills any number of slots without compiling
    again. ``a`` is donated: use the returned state.

    Examples:
      >>> from hamjax.search.population import Population
      >>> trainer = Population(lambda p, x: x @ p["w"])
      >>> a = trainer.init({"w": jnp.zeros((3, 2, 2))})
      >>> b = trainer.init({"w": jnp.ones((3, 2, 2))})
      >>> scatter(a, np.asarray([2, 3, 3]), b).params["w"][:, 0, 0].tolist()
      [0.0, 0.0, 1.0]
    """
    return _scatter_jit(a, jnp.asarray(index, jnp.int32), b)
