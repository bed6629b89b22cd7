"""Spectral norms of kernels by power iteration: a penalty (optax) and a normalisation (params transform).

A kernel ``W`` of shape ``(..., in, out)`` is read as the matrix
``(prod(...) * in, out)`` (a conv kernel ``(kh, kw, in, out)`` becomes
``(kh * kw * in, out)``, as in Miyato et al. 2018). Its largest singular
value ``sigma`` is estimated by power iteration from a vector ``v`` (length
``out``) kept in a :class:`SpectralState` and refined on every call, so one
iteration per training step is enough once the vector has settled:

    u = normalize(W v),  v = normalize(W^T u)   (``iterations`` times)
    sigma = |W v|,  u = W v / sigma,  d sigma / dW = u v^T

:func:`spectral_penalty` adds ``coefficient * u v^T`` to each selected
kernel's gradient (the gradient of ``coefficient * sigma``);
:func:`spectral_normalize` divides each selected kernel by its ``sigma``.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hamjax._base import Transform
from hamjax._checks import check_int
from hamjax._select import Filter, is_none, map_selected
from hamjax.regularize.penalties import check_coefficient


class SpectralState(NamedTuple):
    """Power-iteration vectors, one per selected kernel.

    Attributes:
      vectors: a tree like the params with a float32 vector ``(out,)`` (the
        right singular vector estimate) at each selected kernel and ``None``
        elsewhere.
    """

    vectors: Any


def _matrix(w: jax.Array) -> jax.Array:
    w = jnp.asarray(w).astype(jnp.float32)
    return w.reshape(-1, w.shape[-1])


def _normalize(a: jax.Array) -> jax.Array:
    return a / (jnp.linalg.norm(a) + jnp.asarray(1e-12, jnp.float32))


def _power(w: jax.Array, v: jax.Array, iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(sigma, u, v)`` after ``iterations`` steps from ``v``; no gradient flows through them."""
    m = jax.lax.stop_gradient(_matrix(w))
    v = jax.lax.fori_loop(0, iterations, lambda _, v: _normalize(m.T @ _normalize(m @ v)), v)
    wv = m @ v
    sigma = jnp.linalg.norm(wv)
    u = wv / (sigma + jnp.asarray(1e-12, jnp.float32))
    return sigma, u, v


def _init_vectors(where: str, params: Any, filter: Filter | None, seed: int) -> SpectralState:
    base = jax.random.key(seed)
    index = itertools.count()

    def start(path, leaf):
        del path
        v = jax.random.normal(jax.random.fold_in(base, next(index)), (leaf.shape[-1],), jnp.float32)
        return _normalize(v)

    return SpectralState(map_selected(where, params, filter, start))


def _check_state(where: str, state: Any) -> None:
    if not isinstance(state, SpectralState):
        raise ValueError(f"{where}: state must be a SpectralState (from init), got {type(state).__name__}")


class _Results:
    """Several results at one leaf; not a pytree node, so a tree map treats it as one leaf."""

    def __init__(self, *values):
        self.values = values


def _each(state: SpectralState, params: Any, fn) -> Any:
    """``_Results(*fn(w, v))`` for every selected kernel ``w`` and its vector ``v``; ``None`` elsewhere."""
    return jax.tree.map(lambda v, w: None if v is None else _Results(*fn(w, v)), state.vectors, params, is_leaf=is_none)


def _split(tree: Any, k: int) -> Any:
    """The ``k``-th result at every leaf of a tree from :func:`_each`."""
    return jax.tree.map(
        lambda t: None if t is None else t.values[k], tree, is_leaf=lambda t: t is None or isinstance(t, _Results)
    )


def spectral_norms(params: Any, state: SpectralState, iterations: int = 1) -> tuple[Any, SpectralState]:
    """Estimated largest singular values of the selected kernels, and the refined vectors.

    Args:
      params: the params ``state`` was made for (:func:`spectral_penalty`'s or
        :func:`spectral_normalize`'s ``init``).
      state: a :class:`SpectralState`.
      iterations: power-iteration steps, ``>= 1``.

    Returns:
      ``(sigmas, state)``: a tree like ``params`` with a float32 scalar at each
      selected kernel (``None`` elsewhere), and the state with refined vectors.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> params = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]]), "b": jnp.ones(2)}
      >>> state = regularize.spectral_penalty(0.1).init(params)
      >>> sigmas, state = regularize.spectral_norms(params, state, iterations=20)
      >>> round(float(sigmas["w"]), 4), sigmas["b"]
      (3.0, None)
    """
    iterations = check_int("spectral_norms", "iterations", iterations, minimum=1)
    _check_state("spectral_norms", state)
    out = _each(state, params, lambda w, v: _power(w, v, iterations))
    return _split(out, 0), SpectralState(_split(out, 2))


def spectral_penalty(
    coefficient: Any, iterations: int = 1, filter: Filter | None = None, seed: int = 0
) -> optax.GradientTransformation:
    """An optax transform adding the gradient of ``coefficient * sigma_max(W)`` to each selected kernel's gradient.

    Chain it before the optimizer: ``optax.chain(spectral_penalty(1e-3),
    optax.adam(1e-3))``. Its ``update`` needs the params (it estimates
    ``sigma`` of the current weights); ``d sigma / dW = u v^T`` with the
    power-iteration vectors (see the module doc), reshaped to the kernel.

    Args:
      coefficient: ``>= 0``; may be a traced scalar (a population).
      iterations: power-iteration steps per update, ``>= 1``.
      filter: ``filter(path, leaf) -> bool``; kernels only if ``None``.
      seed: the seed of the starting vectors.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`SpectralState`.

    Raises:
      ValueError: a negative concrete coefficient, ``iterations < 1``, or
        (from ``update``) no params.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> params = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}
      >>> t = regularize.spectral_penalty(0.5, iterations=20)
      >>> g, _ = t.update({"w": jnp.zeros((2, 2))}, t.init(params), params)
      >>> [[round(abs(a), 3) for a in row] for row in g["w"].tolist()]
      [[0.5, 0.0], [0.0, 0.0]]

    References:
      Yoshida & Miyato, "Spectral Norm Regularization for Improving the
      Generalizability of Deep Learning", 2017. https://arxiv.org/abs/1705.10941
    """
    check_coefficient("spectral_penalty", "coefficient", coefficient)
    iterations = check_int("spectral_penalty", "iterations", iterations, minimum=1)
    seed = check_int("spectral_penalty", "seed", seed)

    def init(params):
        return _init_vectors("spectral_penalty", params, filter, seed)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("spectral_penalty: update needs params (optax passes them as its third argument)")
        _check_state("spectral_penalty", state)
        c = jnp.asarray(coefficient, jnp.float32)

        def one(w, v):
            _, u, v = _power(w, v, iterations)
            return (c * jnp.outer(u, v)).reshape(w.shape), v

        out = _each(state, params, one)
        extra, vectors = _split(out, 0), _split(out, 1)
        new = jax.tree.map(
            lambda g, e: g if e is None else g + e.astype(g.dtype), updates, extra, is_leaf=lambda t: t is None
        )
        return new, SpectralState(vectors)

    return optax.GradientTransformation(init, update)


def spectral_normalize(filter: Filter | None = None, iterations: int = 1, seed: int = 0) -> Transform:
    """A params transform dividing each selected kernel by its estimated largest singular value.

    ``apply(params, state)`` refines the vectors by ``iterations`` power
    steps and returns ``(params with W / sigma, state)``; call it on the raw
    params before every forward pass (the reparametrisation of Miyato et
    al.), so the kernels the model uses have spectral norm about 1.

    Args:
      filter: ``filter(path, leaf) -> bool``; kernels only if ``None``.
      iterations: power-iteration steps per ``apply``, ``>= 1``.
      seed: the seed of the starting vectors.

    Returns:
      A :class:`~hamjax.Transform` with a :class:`SpectralState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax import regularize
      >>> t = regularize.spectral_normalize(iterations=20)
      >>> params = {"w": jnp.array([[4.0, 0.0], [0.0, 2.0]])}
      >>> out, state = t.apply(params, t.init(params))
      >>> [[round(a, 3) for a in row] for row in out["w"].tolist()]
      [[1.0, 0.0], [0.0, 0.5]]

    References:
      Miyato et al., "Spectral Normalization for Generative Adversarial
      Networks", ICLR 2018. https://arxiv.org/abs/1802.05957
    """
    iterations = check_int("spectral_normalize", "iterations", iterations, minimum=1)
    seed = check_int("spectral_normalize", "seed", seed)

    def init(params):
        return _init_vectors("spectral_normalize", params, filter, seed)

    def apply(params, state, **extra):
        del extra
        _check_state("spectral_normalize", state)

        def one(w, v):
            sigma, _, v = _power(w, v, iterations)
            return (w / sigma.astype(w.dtype)).astype(w.dtype), v

        out = _each(state, params, one)
        scaled, vectors = _split(out, 0), _split(out, 1)
        new = jax.tree.map(lambda w, s: w if s is None else s, params, scaled, is_leaf=lambda t: t is None)
        return new, SpectralState(vectors)

    return Transform(init, apply)
