"""Train a student from teachers: the distillation objective on :func:`hamjax.fit`.

A distillation run is :func:`hamjax.train.fit` with an
:class:`~hamjax.train.Objective` that adds the losses of
:mod:`hamjax.distill` to the student's own. What the losses compare is
chosen by *terms*, small frozen dataclasses:

* :class:`SoftTargets` (Hinton et al. 2015; with several teachers, their
  weighted ensemble) and :class:`HardLabels`;
* :class:`Features` (FitNets hints, with a learned projection when the
  widths differ), :class:`AttentionTransfer` (Zagoruyko & Komodakis),
  :class:`AttentionProbs` (transformer attention maps),
  :class:`Relational` (Park et al. 2019) on named intermediates
  (:func:`hamjax.jaxpr.capture`);
* :class:`SelfDistillation`: shallow exits of the student learn from its
  own final layer (Zhang et al. 2019); and :class:`EmaTeacher` as the
  teacher makes an exponential moving average of the student its teacher.

Teachers run in eval mode under ``stop_gradient``. Their params are an
argument of the jitted step, not constants compiled into it, and when
their outputs on the training split fit in memory they are computed once
and each step reads its batch's rows (``cache="auto"``): the teacher is
deterministic in eval mode, so this gives the same losses as running it at
every step, at the cost of one pass. Learned pieces (projections, exit
heads) train with the student and come back in ``adapters``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import data as data_lib
from hamjax import distill, jaxpr
from hamjax import train as train_lib
from hamjax._base import TRAINABLE, ApplyFn, call_model, is_protocol_apply, with_trainable

__all__ = [
    "AttentionProbs",
    "AttentionTransfer",
    "DistillResult",
    "EmaTeacher",
    "EmaTeacherState",
    "Features",
    "HardLabels",
    "Relational",
    "SelfDistillation",
    "SoftTargets",
    "ema_teacher",
    "fit",
]

CACHES = ("auto", "always", "never")
_CACHE_BUDGET = 256 * 2**20


def _positive(term, name):
    value = getattr(term, name)
    if not (isinstance(value, int | float) and value > 0):
        raise ValueError(f"{type(term).__name__}.{name}={value!r}; expected a number > 0")


def _weight(term, name="weight"):
    value = getattr(term, name)
    if not (isinstance(value, int | float) and value >= 0):
        raise ValueError(f"{type(term).__name__}.{name}={value!r}; expected a number >= 0")


class _Io(NamedTuple):
    logits: jax.Array
    taps: dict
    teacher_logits: list
    teacher_taps: list
    labels: jax.Array
    adapter: Any
    teacher_weights: Any


@dataclasses.dataclass(frozen=True)
class SoftTargets:
    """Hinton's soft targets: ``weight * T^2 KL(teacher_T || student_T)`` (see :func:`hamjax.distill.soft_target_loss`).

    With several teachers the target is their ensemble, weighted by
    ``fit``'s ``teacher_weights`` (:func:`hamjax.distill.multi_teacher_loss`).
    """

    temperature: float = 4.0
    weight: float = 0.9

    def __post_init__(self):
        _positive(self, "temperature")
        _weight(self)

    def loss(self, io: _Io):
        if len(io.teacher_logits) == 1:
            return distill.soft_target_loss(io.logits, io.teacher_logits[0], temperature=self.temperature)
        return distill.multi_teacher_loss(
            io.logits, io.teacher_logits, temperature=self.temperature, weights=io.teacher_weights
        )


@dataclasses.dataclass(frozen=True)
class HardLabels:
    """The student's own cross-entropy on the labels, times ``weight``."""

    weight: float = 0.1

    def __post_init__(self):
        _weight(self)

    def loss(self, io: _Io):
        return train_lib.cross_entropy(io.logits, io.labels)


@dataclasses.dataclass(frozen=True)
class _Pair:
    """A term comparing the student's intermediate ``student`` with teacher ``teacher_index``'s ``teacher``."""

    student: str
    teacher: str
    weight: float = 1.0
    teacher_index: int = 0

    def __post_init__(self):
        for name in ("student", "teacher"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}; expected an intermediate name")
        _weight(self)
        if not (isinstance(self.teacher_index, int) and self.teacher_index >= 0):
            raise ValueError(f"{type(self).__name__}.teacher_index={self.teacher_index!r}; expected an int >= 0")

    def pair(self, io: _Io):
        return io.taps[self.student], io.teacher_taps[self.teacher_index][self.teacher]


@dataclasses.dataclass(frozen=True)
class Features(_Pair):
    """FitNets hint: MSE between the student's and the teacher's features (:func:`hamjax.distill.feature_loss`).

    When the last axes differ, a linear projection of the student's
    features (an adapter) is learned with the student.
    """

    normalize: bool = False

    def init(self, key, student: jax.ShapeDtypeStruct, teacher: jax.ShapeDtypeStruct):
        if student.shape[:-1] != teacher.shape[:-1]:
            raise ValueError(
                f"Features({self.student!r}, {self.teacher!r}): student shape {student.shape} and teacher shape "
                f"{teacher.shape} differ before the last axis; only the feature width may differ"
            )
        if student.shape[-1] == teacher.shape[-1]:
            return None
        return distill.init_projection(key, student.shape[-1], teacher.shape[-1])

    def loss(self, io: _Io):
        s, t = self.pair(io)
        return distill.feature_loss(s, t, projection=io.adapter, normalize=self.normalize)


@dataclasses.dataclass(frozen=True)
class AttentionTransfer(_Pair):
    """Spatial attention transfer (:func:`hamjax.distill.attention_transfer_loss`) on feature maps or tokens."""

    weight: float = 1000.0
    p: float = 2.0

    def loss(self, io: _Io):
        s, t = self.pair(io)
        return distill.attention_transfer_loss(s, t, p=self.p)


@dataclasses.dataclass(frozen=True)
class AttentionProbs(_Pair):
    """KL between attention probabilities ``(N, heads, T, T)`` (:func:`hamjax.distill.attention_probs_loss`)."""

    def loss(self, io: _Io):
        s, t = self.pair(io)
        return distill.attention_probs_loss(s, t)


@dataclasses.dataclass(frozen=True)
class Relational(_Pair):
    """Relational KD on embeddings: ``distance * RKD-D + angle * RKD-A`` (Park et al. 2019, who use 1:2)."""

    student: str = "embedding"
    teacher: str = "embedding"
    distance: float = 1.0
    angle: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        _weight(self, "distance")
        _weight(self, "angle")

    def loss(self, io: _Io):
        s, t = self.pair(io)
        return self.distance * distill.rkd_distance_loss(s, t) + self.angle * distill.rkd_angle_loss(s, t)


@dataclasses.dataclass(frozen=True)
class SelfDistillation:
    """Shallow exits learn from the student's final logits (:func:`hamjax.distill.self_distillation_loss`).

    Each name in ``exits`` gets an exit head (an adapter): the intermediate
    is averaged over its middle axes and mapped to the classes. The loss
    includes the final layer's cross-entropy, so it needs no
    :class:`HardLabels` and no teacher.
    """

    exits: tuple[str, ...] = ()
    temperature: float = 3.0
    alpha: float = 0.5
    weight: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "exits", tuple(self.exits))
        if not self.exits or not all(isinstance(e, str) for e in self.exits):
            raise ValueError(f"SelfDistillation.exits={self.exits!r}; expected one or more intermediate names")
        _positive(self, "temperature")
        _weight(self)
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"SelfDistillation.alpha={self.alpha!r}; expected a number in [0, 1]")

    def init(self, key, shapes: dict, num_classes: int):
        keys = jax.random.split(key, len(self.exits))
        return {
            name: distill.init_projection(k, shapes[name].shape[-1], num_classes)
            for name, k in zip(self.exits, keys, strict=True)
        }

    def exit_logits(self, io: _Io):
        outs = []
        for name in self.exits:
            h = io.taps[name]
            h = h.reshape(h.shape[0], -1, h.shape[-1]).mean(axis=1)
            outs.append(distill.project(io.adapter[name], h))
        return outs

    def loss(self, io: _Io):
        return distill.self_distillation_loss(
            self.exit_logits(io), io.logits, io.labels, temperature=self.temperature, alpha=self.alpha
        )


@dataclasses.dataclass(frozen=True)
class EmaTeacher:
    """Use an exponential moving average of the student's params as the (only) teacher.

    ``ema <- decay * ema + (1 - decay) * params`` after every step (mean
    teacher); the EMA lives in the optimizer state (:func:`ema_teacher`).
    """

    decay: float = 0.999

    def __post_init__(self):
        if not (isinstance(self.decay, int | float) and 0 <= self.decay <= 1):
            raise ValueError(f"EmaTeacher.decay={self.decay!r}; expected a number in [0, 1]")


class EmaTeacherState(NamedTuple):
    """State of :func:`ema_teacher`: the moving average of the params and the inner optimizer's state."""

    ema: Any
    inner: Any


def ema_teacher(inner: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """An optax adapter that keeps an EMA of the params it updates, readable as ``"ema"``.

    Args:
      inner: the optimizer.
      decay: the EMA decay in ``[0, 1]``.

    Returns:
      An ``optax.GradientTransformation`` whose state is an
      :class:`EmaTeacherState`; ``optax.tree_utils.tree_get(state, "ema")``
      reads the average.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from hamjax.distill_train import ema_teacher
      >>> opt = ema_teacher(optax.sgd(1.0), 0.5)
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, state = opt.update({"w": -jnp.ones(2)}, opt.init(params), params)
      >>> optax.tree_utils.tree_get(state, "ema")["w"].tolist()
      [0.5, 0.5]
    """

    def init(params):
        return EmaTeacherState(jax.tree.map(jnp.array, params), inner.init(params))  # copies: the step donates params

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ema_teacher: update needs params")
        updates, inner_state = inner.update(updates, state.inner, params)
        ema = distill.ema_update(state.ema, optax.apply_updates(params, updates), decay=decay)
        return updates, EmaTeacherState(ema, inner_state)

    return optax.GradientTransformation(init, update)


_PAIRS = (Features, AttentionTransfer, AttentionProbs, Relational)
_TERMS = (SoftTargets, HardLabels, *_PAIRS, SelfDistillation)


class DistillResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: the student's best params (its own kind of params).
      adapters: ``{term index: params}`` of the learned projections and
        exit heads.
      train: the :class:`hamjax.train.TrainResult` of the run (its params
        hold the student and the adapters together).
      cached: whether the teachers' outputs were computed once.
    """

    params: Any
    adapters: dict
    train: train_lib.TrainResult
    cached: bool


def _split_vars(variables, protocol: bool):
    inner = variables[TRAINABLE]
    if protocol:
        return {**variables, TRAINABLE: inner["student"]}, inner["adapters"]
    return inner["student"], inner["adapters"]


def _join_vars(student_vars, adapters, protocol: bool):
    if protocol:
        return {**student_vars, TRAINABLE: {"student": student_vars[TRAINABLE], "adapters": adapters}}
    return {TRAINABLE: {"student": student_vars, "adapters": adapters}}


def _with_adapters(student_apply, names: tuple[str, ...]) -> ApplyFn:
    """The student as an ApplyFn whose trainable params also hold the adapters; ``with_taps=True`` adds taps."""
    protocol = is_protocol_apply(student_apply)
    captured = jaxpr.capture(student_apply, names)

    def fn(variables, x, *, train, rng, mutable, with_taps=False, **kw):
        s_vars, adapters = _split_vars(variables, protocol)
        model = captured if with_taps else student_apply
        if protocol:
            out = model(s_vars, x, train=train, rng=rng, mutable=mutable, **kw)
        else:
            out = model(s_vars, x, **kw)
            out = (out, s_vars) if mutable else out
        if not mutable:
            return out
        y, new_vars = out
        return y, _join_vars(new_vars, adapters, protocol)

    return ApplyFn(fn, student_apply.collections if protocol else (TRAINABLE,))


def _teachers(teachers) -> tuple:
    if isinstance(teachers, EmaTeacher):
        return teachers
    if isinstance(teachers, tuple) and len(teachers) == 2 and callable(teachers[0]):
        teachers = [teachers]
    teachers = tuple(teachers)
    for i, t in enumerate(teachers):
        if not (isinstance(t, tuple | list) and len(t) == 2 and callable(t[0])):
            raise ValueError(f"fit: teachers[{i}] is {type(t).__name__}; expected an (apply_fn, params) pair")
    return teachers


def _needs(terms) -> tuple[tuple[str, ...], dict[int, tuple[str, ...]]]:
    student, teacher = [], {}
    for term in terms:
        if isinstance(term, _PAIRS):
            student.append(term.student)
            teacher.setdefault(term.teacher_index, []).append(term.teacher)
        elif isinstance(term, SelfDistillation):
            student.extend(term.exits)
    return tuple(dict.fromkeys(student)), {k: tuple(dict.fromkeys(v)) for k, v in teacher.items()}


def _teacher_forward(apply_fn, names):
    captured = jaxpr.capture(apply_fn, names)

    def forward(params, x):
        y, taps = call_model(captured, params, x)[0]
        return jax.lax.stop_gradient((y, taps))

    return forward


def _check_finite(what: str, tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        distill._check_finite(f"fit: {what}{jax.tree_util.keystr(path)}", leaf)


def _cache_outputs(forwards, teachers, x: np.ndarray, batch_size: int):
    outs = []
    for k, (forward, (_, params)) in enumerate(zip(forwards, teachers, strict=True)):
        f = jax.jit(forward)
        parts = [jax.device_get(f(params, x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        logits, taps = jax.tree.map(lambda *a: np.concatenate(a), *parts)
        _check_finite(f"the outputs of teacher {k} on the training split", {"logits": logits, "taps": taps})
        outs.append((logits, taps))
    return {"logits": [o[0] for o in outs], "taps": [o[1] for o in outs]}


def _make_loss(student_apply, terms, forwards, ema: bool, teacher_weights):
    protocol = is_protocol_apply(student_apply)

    def loss(apply_fn, params, x, y, *, rng, frozen, batch, opt_state):
        (logits, taps), new_params = apply_fn(params, x, train=True, rng=rng, mutable=True, with_taps=True)
        s_vars, adapters = _split_vars(params, protocol)
        if ema:
            average = optax.tree_utils.tree_get(opt_state, "ema")["student"]
            outs = [forwards[0](with_trainable(student_apply, s_vars, average), x)]
        elif batch is not None:
            outs = list(zip(batch["logits"], batch["taps"], strict=True))
        else:
            outs = [f(p, x) for f, p in zip(forwards, frozen, strict=True)]
        io = _Io(logits, taps, [o[0] for o in outs], [o[1] for o in outs], y, None, teacher_weights)
        total, metrics = jnp.zeros((), jnp.float32), {}
        for i, term in enumerate(terms):
            value = term.loss(io._replace(adapter=adapters.get(str(i))))
            metrics[f"{type(term).__name__}/{i}"] = value
            total = total + term.weight * value
        return total, (logits, new_params, metrics)

    return loss


def fit(
    student_apply,
    student_params,
    dataset,
    config: train_lib.TrainConfig | None = None,
    *,
    teachers=(),
    terms: Sequence = (SoftTargets(), HardLabels()),
    teacher_weights: Sequence[float] | None = None,
    cache: str = "auto",
    checkpoint_dir: str | None = None,
    progress: bool = True,
    callback=None,
) -> DistillResult:
    """Train ``(student_apply, student_params)`` on ``dataset`` with distillation ``terms``.

    The loss is ``sum(term.weight * term.loss)``; the step is
    :func:`hamjax.train.make_train_step`'s, so precision policies, loss
    scaling, early stopping and checkpoint/resume behave as in
    :func:`hamjax.fit`. Everything is checked on four training examples
    before the step is compiled: term fields, intermediate names, the
    teachers' output shapes against the student's, the shapes each term
    compares.

    Args:
      student_apply, student_params: the student (any kind of the contract).
      dataset: a :class:`hamjax.data.Dataset`.
      config: a :class:`hamjax.TrainConfig`.
      teachers: an ``(apply_fn, params)`` pair, a sequence of them, an
        :class:`EmaTeacher`, or ``()`` when only :class:`HardLabels` and
        :class:`SelfDistillation` terms are used.
      terms: the loss terms (see the module docstring).
      teacher_weights: ensemble weights of several teachers for
        :class:`SoftTargets` (default: equal).
      cache: ``"auto"`` computes the teachers' outputs on the training
        split once when they take at most 256 MiB; ``"always"`` and
        ``"never"`` force it either way (an :class:`EmaTeacher` is never
        cached).
      checkpoint_dir, progress, callback: as for :func:`hamjax.fit`.

    Returns:
      A :class:`DistillResult`.

    Raises:
      ValueError: for a bad term, teacher or cache choice, a missing
        intermediate, teacher logits shaped unlike the student's, shapes a
        term cannot compare, or teacher outputs that are not finite.

    Examples:
      >>> import hamjax
      >>> from hamjax import distill_train, models
      >>> ds = hamjax.data.load("digits")
      >>> teacher = hamjax.functional(models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))
      >>> t = hamjax.fit(*teacher, ds, hamjax.TrainConfig(epochs=3), progress=False)
      >>> student = hamjax.functional(models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 16, 10)))
      >>> out = distill_train.fit(*student, ds, hamjax.TrainConfig(epochs=3), teachers=(teacher[0], t.params),
      ...                         progress=False)
      >>> out.cached, out.train.history[-1]["val_accuracy"] > 0.8
      (True, True)
    """
    config = config or train_lib.TrainConfig()
    terms = tuple(terms)
    if not terms:
        raise ValueError("fit: terms is empty; give at least one loss term")
    for i, term in enumerate(terms):
        if not isinstance(term, _TERMS):
            raise ValueError(
                f"fit: terms[{i}] is {type(term).__name__}; expected one of {[t.__name__ for t in _TERMS]}"
            )
    if cache not in CACHES:
        raise ValueError(f"fit: cache={cache!r}; expected one of {CACHES}")
    teachers = _teachers(teachers)
    ema = isinstance(teachers, EmaTeacher)
    if ema and cache == "always":
        raise ValueError("fit: an EmaTeacher changes every step, so its outputs cannot be cached; use cache='auto'")
    teacher_list = [(student_apply, student_params)] if ema else list(teachers)
    count = len(teacher_list)
    needs_teacher = [t for t in terms if not isinstance(t, HardLabels | SelfDistillation)]
    if needs_teacher and not count:
        raise ValueError(f"fit: {type(needs_teacher[0]).__name__} needs a teacher; pass teachers=(apply_fn, params)")
    for term in terms:
        if isinstance(term, _PAIRS) and term.teacher_index >= max(count, 1):
            raise ValueError(f"fit: {term!r} names teacher {term.teacher_index}, but there are {count} teachers")
    if teacher_weights is not None:
        teacher_weights = tuple(float(w) for w in teacher_weights)
        if len(teacher_weights) != count or min(teacher_weights) < 0 or sum(teacher_weights) <= 0:
            raise ValueError(
                f"fit: teacher_weights={teacher_weights}; expected {count} weights >= 0 with a positive sum"
            )

    train = dataset.train
    x0 = train.x[:4]  # RKD's angle needs three examples
    s_names, t_names = _needs(terms)
    protocol = is_protocol_apply(student_apply)
    s_logits, s_shapes = jax.eval_shape(
        lambda p, x: call_model(jaxpr.capture(student_apply, s_names), p, x)[0], student_params, x0
    )
    forwards = [_teacher_forward(apply, t_names.get(k, ())) for k, (apply, _) in enumerate(teacher_list)]
    t_shapes = [jax.eval_shape(f, p, x0) for f, (_, p) in zip(forwards, teacher_list, strict=True)]
    for k, (t_logits, _) in enumerate(t_shapes):
        if needs_teacher and t_logits.shape != s_logits.shape:
            raise ValueError(
                f"fit: teacher {k} outputs shape {t_logits.shape} on four examples, the student {s_logits.shape}; "
                "distillation needs the same classes"
            )
    keys = jax.random.split(jax.random.key(config.seed), len(terms))
    adapters = {}
    for i, (term, key) in enumerate(zip(terms, keys, strict=True)):
        if isinstance(term, Features):
            adapter = term.init(key, s_shapes[term.student], t_shapes[term.teacher_index][1][term.teacher])
        elif isinstance(term, SelfDistillation):
            adapter = term.init(key, s_shapes, s_logits.shape[-1])
        else:
            adapter = None
        if adapter is not None:
            adapters[str(i)] = adapter

    per_example_bytes = sum(np.prod(a.shape[1:]) * a.dtype.itemsize for a in jax.tree.leaves(t_shapes))
    fits = cache == "always" or (cache == "auto" and int(per_example_bytes) * len(train.y) <= _CACHE_BUDGET)
    cached = not ema and count > 0 and fits
    loss = _make_loss(student_apply, terms, forwards, ema, teacher_weights)
    composite = _with_adapters(student_apply, s_names)
    variables = _join_vars(student_params, adapters, protocol)
    frozen = None if ema else [p for _, p in teacher_list]
    # Trace the whole objective once on four examples, so that a shape no term accepts fails here.
    jax.eval_shape(
        lambda v, f, x, y: loss(
            composite, v, x, y, rng=jax.random.key(0), frozen=f, batch=None, opt_state=_ema_state(v, ema)
        ),
        variables,
        frozen,
        x0,
        train.y[:4],
    )
    if cached:
        per_example, frozen = _cache_outputs(forwards, teacher_list, train.x, 256), None
    else:
        per_example = None
        if not ema:
            first = train.x[: config.batch_size]
            for k, (f, p) in enumerate(zip(forwards, frozen, strict=True)):
                _check_finite(f"the outputs of teacher {k} on the first batch", jax.device_get(f(p, first)))
    optimizer = None
    if ema:
        steps = data_lib.steps_per_epoch(len(train.y), config.batch_size) * config.epochs
        optimizer = ema_teacher(train_lib.make_optimizer(config, steps), teachers.decay)
    result = train_lib.fit(
        composite,
        variables,
        dataset,
        config,
        optimizer=optimizer,
        objective=train_lib.Objective(loss, frozen, per_example),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        callback=callback,
    )
    student, adapters = _split_vars(result.params, protocol)
    return DistillResult(student, adapters, result, cached)


def _ema_state(variables, ema: bool):
    return EmaTeacherState(variables[TRAINABLE], None) if ema else None
