"""Genome batches as matrices: the static column layout of a space, and search coordinates.

The jitted operators on genome batches (:meth:`Space.sample
<hamjax.search.space.Space.sample>`, ``to_unit``, ``from_unit``, and
:func:`~hamjax.search.evolution.mutate`, :func:`~hamjax.search.evolution.blend`)
process each kind of gene as one ``(N, k)`` matrix, so the compiled program
(and its compile time) does not grow with the number of genes.
:func:`layout_of` gives a space's columns by kind, :func:`stack_columns`
builds a matrix from a batch, :func:`to_search` and :func:`from_search` move
float columns in and out of search coordinates (``log(x)`` for log genes),
and :func:`assemble` puts matrices back together as a genome batch.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hamjax.search.genes import Choice, Float, Genomes, Int

if TYPE_CHECKING:
    from hamjax.search.space import Space


class Layout(NamedTuple):
    """The static columns of a space, by kind: float genes, and discrete (``Int`` and ``Choice``) genes.

    A ``Choice`` is laid out as an ``Int`` over its option indices. Every
    array is numpy, so it is a constant of the programs that use it.

    Attributes:
      floats: names of the ``Float`` genes, in the space's order.
      low, high: ``(f,)`` float64 bounds in search coordinates (``log`` for log genes).
      log: ``(f,)`` bool, which float genes are searched in log space.
      clip_low, clip_high: ``(f,)`` float32 bounds, so results validate.
      discrete: names of the ``Int`` and ``Choice`` genes, in the space's order.
      int_low, int_high: ``(i,)`` int32 bounds (option indices for a ``Choice``).
      choice: ``(i,)`` bool, which discrete genes are ``Choice`` genes.

    Examples:
      >>> from hamjax.search.space import Choice, Float, Int, Space
      >>> lay = layout_of(Space({"lr": Float(1e-3, 1.0, log=True), "n": Int(1, 4), "act": Choice(("a", "b"))}))
      >>> lay.floats, lay.discrete, lay.int_high.tolist(), lay.choice.tolist()
      (('lr',), ('n', 'act'), [4, 1], [False, True])
    """

    floats: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    log: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    discrete: tuple[str, ...]
    int_low: np.ndarray
    int_high: np.ndarray
    choice: np.ndarray


@functools.cache
def layout_of(space: Space) -> Layout:
    """The :class:`Layout` of ``space`` (cached: a space is hashable and immutable).

    Args:
      space: a :class:`~hamjax.search.space.Space`.

    Returns:
      Its :class:`Layout`.

    Examples:
      >>> from hamjax.search.space import Float, Space
      >>> layout_of(Space({"x": Float(0.0, 2.0)})).high.tolist()
      [2.0]
    """
    floats = [(n, g) for n, g in space.genes.items() if isinstance(g, Float)]
    discrete = [(n, g) for n, g in space.genes.items() if not isinstance(g, Float)]
    search = [(math.log(g.low), math.log(g.high)) if g.log else (g.low, g.high) for _, g in floats]
    ranges = [(g.low, g.high) if isinstance(g, Int) else (0, len(g.options) - 1) for _, g in discrete]
    return Layout(
        floats=tuple(n for n, _ in floats),
        low=np.array([lo for lo, _ in search], np.float64),
        high=np.array([hi for _, hi in search], np.float64),
        log=np.array([g.log for _, g in floats], bool),
        clip_low=np.array([g.low for _, g in floats], np.float32),
        clip_high=np.array([g.high for _, g in floats], np.float32),
        discrete=tuple(n for n, _ in discrete),
        int_low=np.array([lo for lo, _ in ranges], np.int32),
        int_high=np.array([hi for _, hi in ranges], np.int32),
        choice=np.array([isinstance(g, Choice) for _, g in discrete], bool),
    )


def stack_columns(genomes: Genomes, names: tuple[str, ...], dtype: Any) -> jax.Array:
    """The genes ``names`` of a batch as one ``(N, len(names))`` matrix of ``dtype``.

    Args:
      genomes: a genome batch ``name -> (N,)``.
      names: the columns, in order.
      dtype: the matrix dtype.

    Returns:
      ``(N, len(names))`` array.

    Examples:
      >>> import jax.numpy as jnp
      >>> stack_columns({"a": jnp.array([1, 2]), "b": jnp.array([3, 4])}, ("b", "a"), jnp.float32).tolist()
      [[3.0, 1.0], [4.0, 2.0]]
    """
    return jnp.stack([jnp.asarray(genomes[n]).astype(dtype) for n in names], axis=1)


def to_search(layout: Layout, x: jax.Array) -> jax.Array:
    """``(N, f)`` float gene values to search coordinates: ``log(x)`` for log genes, ``x`` otherwise.

    Args:
      layout: the space's :class:`Layout`.
      x: ``(N, f)`` values of ``layout.floats``.

    Returns:
      ``(N, f)`` search coordinates.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.search.space import Float, Space
      >>> lay = layout_of(Space({"lr": Float(1e-3, 1.0, log=True)}))
      >>> round(float(to_search(lay, jnp.array([[1.0]]))[0, 0]), 6)
      0.0
    """
    log = layout.log[None, :]
    return jnp.where(log, jnp.log(jnp.where(log, x, 1.0)), x)


def from_search(layout: Layout, s: jax.Array) -> jax.Array:
    """``(N, f)`` search coordinates back to float32 gene values, clipped into the genes' float32 bounds.

    Args:
      layout: the space's :class:`Layout`.
      s: ``(N, f)`` search coordinates (e.g. from :func:`to_search` plus a step).

    Returns:
      ``(N, f)`` float32 values.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.search.space import Float, Space
      >>> lay = layout_of(Space({"x": Float(0.0, 1.0)}))
      >>> from_search(lay, jnp.array([[1.5], [0.25]])).tolist()
      [[1.0], [0.25]]
    """
    log = layout.log[None, :]
    x = jnp.where(log, jnp.exp(jnp.where(log, s, 0.0)), s)
    return jnp.clip(x, layout.clip_low[None, :], layout.clip_high[None, :]).astype(jnp.float32)


def assemble(names: tuple[str, ...], *groups: tuple[tuple[str, ...], jax.Array]) -> Genomes:
    """A genome batch from ``(column names, (N, k) matrix)`` groups, with its keys in the order ``names``.

    Args:
      names: every gene name, in the space's order.
      *groups: pairs of column names and the matrix holding them.

    Returns:
      ``name -> (N,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = assemble(("a", "b"), (("b",), jnp.array([[1.0]])), (("a",), jnp.array([[2]])))
      >>> list(g), g["a"].tolist()
      (['a', 'b'], [2])
    """
    out = {}
    for columns, matrix in groups:
        out.update({n: matrix[:, j] for j, n in enumerate(columns)})
    return {n: out[n] for n in names}
