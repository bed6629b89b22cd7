"""Train a student from teachers: :func:`fit`, the distillation objective on :func:`hamjax.train.fit`.

A distillation run is :func:`hamjax.train.fit` with an :class:`~hamjax.train.Objective` that adds
the losses of :mod:`hamjax.distill` to the student's own, as chosen by *terms*
(:mod:`hamjax.distill.terms`). The teachers are ``(apply_fn, params)`` pairs, or an
:class:`~hamjax.distill.EmaTeacher`, which makes an exponential moving average of the student
its teacher.

Teachers run in eval mode under ``stop_gradient``. Their params are an argument of the jitted
step, not constants compiled into it, and when their outputs on the training split fit in memory
they are computed once and each step reads its batch's rows (``cache="auto"``): the teacher is
deterministic in eval mode, so this gives the same losses as running it at every step, at the
cost of one pass. Learned pieces (projections, exit heads) train with the student and come back
in ``adapters``.

This module runs :func:`hamjax.train.fit`, so it sits above the training engine; nothing else in
the family imports it. It reads :mod:`hamjax.train` as a module, at call time, because
:mod:`hamjax.train` takes its cross-entropy from :mod:`hamjax.distill.losses`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax import train
from hamjax._base import TRAINABLE, ApplyFn, call_model, is_protocol_apply, with_trainable
from hamjax._checks import check_choice, check_finite
from hamjax.augment import mixup as mix_views
from hamjax.augment import soft_targets
from hamjax.data import check_dataset, describe_value, steps_per_epoch
from hamjax.distill.matching import check_view, teacher_forward, view_keys
from hamjax.distill.teacher import EmaTeacher, EmaTeacherState, ema_teacher
from hamjax.distill.terms import TERMS, Features, HardLabels, PairTerm, SelfDistillation, SoftTargets, TermInputs
from hamjax.jaxpr import capture

__all__ = ["CACHES", "DistillResult", "fit"]

CACHES = ("auto", "always", "never")
"""The ``cache=`` values of :func:`fit`: when the teachers' outputs are computed once."""
_CACHE_BUDGET = 256 * 2**20
_WHERE = "distill.fit"


class DistillResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: the student's best params (its own kind of params).
      adapters: ``{term index: params}`` of the learned projections and exit heads.
      train: the :class:`hamjax.train.TrainResult` of the run (its params hold the student and
        the adapters together).
      cached: whether the teachers' outputs were computed once.
    """

    params: Any
    adapters: dict
    train: train.TrainResult
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
    captured = capture(student_apply, names)

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


def _is_pair(value) -> bool:
    return isinstance(value, tuple | list) and len(value) == 2 and callable(value[0])


def _teachers(teachers) -> tuple | EmaTeacher:
    """The teachers as a tuple of ``(apply_fn, params)`` pairs; one pair alone is one teacher."""
    if isinstance(teachers, EmaTeacher):
        return teachers
    if _is_pair(teachers):
        return (tuple(teachers),)
    if callable(teachers):
        raise ValueError(
            f"{_WHERE}: teachers must be an (apply_fn, params) pair or a sequence of them, got a function alone "
            f"({type(teachers).__name__}); pass teachers=(apply_fn, params)"
        )
    try:
        items = None if isinstance(teachers, Mapping | str | bytes) else tuple(teachers)
    except TypeError:
        items = None
    if items is None:
        raise ValueError(
            f"{_WHERE}: teachers must be an (apply_fn, params) pair or a sequence of them, "
            f"got {describe_value(teachers)}"
        )
    for i, t in enumerate(items):
        if not _is_pair(t):
            raise ValueError(f"{_WHERE}: teachers[{i}] must be an (apply_fn, params) pair, got {describe_value(t)}")
    return tuple(tuple(t) for t in items)


def _needs(terms) -> tuple[tuple[str, ...], dict[int, tuple[str, ...]]]:
    student, teacher = [], {}
    for term in terms:
        if isinstance(term, PairTerm):
            student.append(term.student)
            teacher.setdefault(term.teacher_index, []).append(term.teacher)
        elif isinstance(term, SelfDistillation):
            student.extend(term.exits)
    return tuple(dict.fromkeys(student)), {k: tuple(dict.fromkeys(v)) for k, v in teacher.items()}


def _teacher_forward(apply_fn, names):
    captured = capture(apply_fn, names)

    def forward(params, x):
        y, taps = call_model(captured, params, x)[0]
        return jax.lax.stop_gradient((y, taps))

    return forward


def _cache_outputs(forwards, teachers, x: np.ndarray, batch_size: int):
    outs = []
    for k, (forward, (_, params)) in enumerate(zip(forwards, teachers, strict=True)):
        f = jax.jit(forward)
        parts = [jax.device_get(f(params, x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        logits, taps = jax.tree.map(lambda *a: np.concatenate(a), *parts)
        check_finite(_WHERE, f"the outputs of teacher {k} on the training split", {"logits": logits, "taps": taps})
        outs.append((logits, taps))
    return {"logits": [o[0] for o in outs], "taps": [o[1] for o in outs]}


def _make_loss(student_apply, terms, forwards, ema: bool, teacher_weights, view=None, online=None):
    """The objective's loss; ``online`` teachers (:func:`teacher_forward`) see ``view = (augment, mixup, classes)``."""
    augment, alpha, classes = view or (None, 0.0, 0)
    protocol = is_protocol_apply(student_apply)

    def loss(apply_fn, params, x, y, *, rng, frozen, batch, opt_state):
        if online is not None:
            keys = view_keys(rng)
            x = x if augment is None else augment(keys.augment, x)
            if alpha:  # the labels become the mixed probability rows
                rows = y if jnp.issubdtype(y.dtype, jnp.floating) else soft_targets(y, classes, 0.0)
                x, y = mix_views(keys.mix, x, rows, alpha)
            teacher_keys = jax.random.split(keys.teacher, len(online))
        (logits, taps), new_params = apply_fn(params, x, train=True, rng=rng, mutable=True, with_taps=True)
        s_vars, adapters = _split_vars(params, protocol)
        if ema:
            average = with_trainable(student_apply, s_vars, optax.tree_utils.tree_get(opt_state, "ema")["student"])
            outs = [forwards[0](average, x) if online is None else online[0](average, x, teacher_keys[0])]
        elif batch is not None:
            outs = list(zip(batch["logits"], batch["taps"], strict=True))
        elif online is not None:
            outs = [f(p, x, k) for f, p, k in zip(online, frozen, teacher_keys, strict=False)]
        else:
            outs = [f(p, x) for f, p in zip(forwards, frozen, strict=True)]
        inputs = TermInputs(logits, taps, [o[0] for o in outs], [o[1] for o in outs], y, None, teacher_weights)
        total, metrics = jnp.zeros((), jnp.float32), {}
        for i, term in enumerate(terms):
            value = term.loss(inputs._replace(adapter=adapters.get(str(i))))
            metrics[f"{type(term).__name__}/{i}"] = value
            total = total + term.weight * value
        return total, (logits, new_params, metrics)

    return loss


def _ema_state(variables, ema: bool):
    return EmaTeacherState(variables[TRAINABLE], None) if ema else None


def fit(
    student_apply,
    student_params,
    dataset,
    config: train.TrainConfig | None = None,
    *,
    teachers=(),
    terms: Sequence = (SoftTargets(), HardLabels()),
    teacher_weights: Sequence[float] | None = None,
    cache: str = "auto",
    augment=None,
    mixup: float = 0.0,
    teacher_method: str = "eval",
    teacher_noise: float = 0.0,
    checkpoint_dir: str | None = None,
    progress: bool = True,
    callback=None,
) -> DistillResult:
    """Train ``(student_apply, student_params)`` on ``dataset`` with distillation ``terms``.

    The loss is ``sum(term.weight * term.loss)``; the step is
    :func:`hamjax.train.make_train_step`'s, so precision policies, loss scaling, early stopping
    and checkpoint/resume behave as in :func:`hamjax.fit`. Everything is checked on four training
    examples before the step is compiled: term fields, intermediate names, the teachers' output
    shapes against the student's, the shapes each term compares.

    Args:
      student_apply, student_params: the student (any kind of the contract).
      dataset: a :class:`hamjax.data.Dataset`.
      config: a :class:`hamjax.TrainConfig`.
      teachers: an ``(apply_fn, params)`` pair (one teacher; a tuple or a
        two-item list whose first item is callable), a sequence of them, an
        :class:`~hamjax.distill.EmaTeacher`, or ``()`` when only
        :class:`~hamjax.distill.HardLabels` and :class:`~hamjax.distill.SelfDistillation` terms
        are used.
      terms: the loss terms (:mod:`hamjax.distill.terms`).
      teacher_weights: ensemble weights of several teachers for
        :class:`~hamjax.distill.SoftTargets` (default: equal).
      cache: one of :data:`CACHES`: ``"auto"`` computes the teachers' outputs on the training
        split once when they take at most 256 MiB; ``"always"`` and ``"never"`` force it either
        way (an :class:`~hamjax.distill.EmaTeacher` is never cached). Anything below that
        changes the teacher's input or output per step makes the teachers run online, and so
        do the views of the config (``augment``, ``mixup``, ``cutmix``, ``adversarial``), which
        :func:`hamjax.train.fit` draws before the objective sees the batch.
      augment: ``None``, a spec string (:func:`hamjax.augment.parse`, ``"shift=2,rotate=10"``)
        or a function ``(key, x) -> x`` drawing a view of each batch: the student and the teachers both see it, so
        the student matches the teacher's function beyond the training images (function
        matching, :mod:`hamjax.distill.matching`). Its key is folded from the step's key.
      mixup: Beta alpha (>= 0; 0 is off) of :func:`hamjax.augment.mixup` on the view: the student
        and the teachers see the mixed images, and the labels of
        :class:`~hamjax.distill.HardLabels` become the mixed probability rows.
      teacher_method: one of :data:`~hamjax.distill.TEACHER_METHODS`: ``"eval"``, or
        ``"dropout"`` to run the teachers in train mode (dropout on, a fresh key per step;
        batch statistics of the view, running averages left as they are), a regularised
        teacher.
      teacher_noise: standard deviation (>= 0) of Gaussian jitter added to the teachers' input
        only.
      checkpoint_dir, progress, callback: as for :func:`hamjax.fit`.

    Returns:
      A :class:`DistillResult`.

    Raises:
      ValueError: for a dataset :func:`hamjax.data.check_dataset` refuses (before anything is
        traced), a single function passed as ``teachers``, a bad term, teacher, cache or
        teacher_method choice, a negative ``teacher_noise`` or ``mixup``, an ``augment`` that is not
        a spec or a function or changes the batch's shape or dtype, ``cache="always"`` with a teacher that runs online, a
        missing intermediate, teacher logits
        shaped unlike the student's, shapes a term cannot compare, or teacher outputs that are
        not finite.

    Examples:
      >>> import hamjax
      >>> from hamjax import distill, models
      >>> ds = hamjax.data.load("digits")
      >>> config = hamjax.TrainConfig(epochs=5, learning_rate=1e-2)
      >>> teacher = hamjax.functional(models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 64, 10)))
      >>> t = hamjax.fit(*teacher, ds, config, progress=False)  # doctest: +SKIP
      >>> student = hamjax.functional(models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 16, 10)))
      >>> out = distill.fit(*student, ds, config, teachers=(teacher[0], t.params), progress=False)  # doctest: +SKIP
      >>> out.cached, out.train.history[-1]["val_accuracy"] > 0.6  # doctest: +SKIP
      (True, True)
    """
    config = config or train.TrainConfig()
    terms = tuple(terms)
    if not terms:
        raise ValueError(f"{_WHERE}: terms must hold at least one loss term, got ()")
    for i, term in enumerate(terms):
        if not isinstance(term, TERMS):
            raise ValueError(
                f"{_WHERE}: terms[{i}] must be one of {[t.__name__ for t in TERMS]}, got {type(term).__name__}"
            )
    check_choice(_WHERE, "cache", cache, CACHES)
    check_dataset(_WHERE, "dataset", dataset)
    augment, varies = check_view(
        _WHERE, augment, dataset.train.x[:4], mixup=mixup, teacher_method=teacher_method, teacher_noise=teacher_noise
    )
    # the training step's own views (TrainConfig's augment, mixup, cutmix, adversarial inputs) reach the
    # objective as x, so a teacher cached on the clean split would no longer see what the student sees
    varies = varies or bool(config.augment or config.mixup or config.cutmix or config.adversarial != "none")
    if varies and cache == "always":
        raise ValueError(
            f"{_WHERE}: the teachers see a new view every step (augment, mixup, teacher_method or teacher_noise "
            "here or in the TrainConfig), "
            "so their outputs cannot be cached; use cache='auto'"
        )
    teachers = _teachers(teachers)
    ema = isinstance(teachers, EmaTeacher)
    if ema and cache == "always":
        raise ValueError(
            f"{_WHERE}: an EmaTeacher changes every step, so its outputs cannot be cached; use cache='auto'"
        )
    teacher_list = [(student_apply, student_params)] if ema else list(teachers)
    count = len(teacher_list)
    needs_teacher = [t for t in terms if not isinstance(t, HardLabels | SelfDistillation)]
    if needs_teacher and not count:
        raise ValueError(
            f"{_WHERE}: {type(needs_teacher[0]).__name__} needs a teacher; pass teachers=(apply_fn, params)"
        )
    for term in terms:
        if isinstance(term, PairTerm) and term.teacher_index >= max(count, 1):
            raise ValueError(f"{_WHERE}: {term!r} names teacher {term.teacher_index}, but there are {count} teachers")
    if teacher_weights is not None:
        teacher_weights = tuple(float(w) for w in teacher_weights)
        if len(teacher_weights) != count or min(teacher_weights) < 0 or sum(teacher_weights) <= 0:
            raise ValueError(
                f"{_WHERE}: teacher_weights must be {count} weights >= 0 with a positive sum, got {teacher_weights}"
            )

    split = dataset.train
    x0 = split.x[:4]  # RKD's angle needs three examples
    s_names, t_names = _needs(terms)
    protocol = is_protocol_apply(student_apply)
    s_logits, s_shapes = jax.eval_shape(
        lambda p, x: call_model(capture(student_apply, s_names), p, x)[0], student_params, x0
    )
    forwards = [_teacher_forward(apply, t_names.get(k, ())) for k, (apply, _) in enumerate(teacher_list)]
    t_shapes = [jax.eval_shape(f, p, x0) for f, (_, p) in zip(forwards, teacher_list, strict=True)]
    for k, (t_logits, _) in enumerate(t_shapes):
        if needs_teacher and t_logits.shape != s_logits.shape:
            raise ValueError(
                f"{_WHERE}: teacher {k} outputs shape {t_logits.shape} on four examples, the student "
                f"{s_logits.shape}; distillation needs the same classes"
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
    fits = cache == "always" or (cache == "auto" and int(per_example_bytes) * len(split.y) <= _CACHE_BUDGET)
    cached = not ema and not varies and count > 0 and fits
    online = None
    if varies:
        online = [
            teacher_forward(capture(apply, t_names.get(k, ())), teacher_method, teacher_noise)
            for k, (apply, _) in enumerate(teacher_list)
        ]
    loss = _make_loss(
        student_apply, terms, forwards, ema, teacher_weights, (augment, float(mixup), s_logits.shape[-1]), online
    )
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
        split.y[:4],
    )
    if cached:
        per_example, frozen = _cache_outputs(forwards, teacher_list, split.x, 256), None
    else:
        per_example = None
        if not ema:
            first = split.x[: config.batch_size]
            for k, (f, p) in enumerate(zip(forwards, frozen, strict=True)):
                check_finite(_WHERE, f"the outputs of teacher {k} on the first batch", jax.device_get(f(p, first)))
    optimizer = None
    if ema:
        steps = steps_per_epoch(len(split.y), config.batch_size) * config.epochs
        optimizer = ema_teacher(train.make_optimizer(config, steps), teachers.decay)
    result = train.fit(
        composite,
        variables,
        dataset,
        config,
        optimizer=optimizer,
        objective=train.Objective(loss, frozen, per_example),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        callback=callback,
    )
    student, adapters = _split_vars(result.params, protocol)
    return DistillResult(student, adapters, result, cached)
