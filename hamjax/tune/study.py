"""The Optuna study behind a tune run: created or resumed, its directions checked, its records in user attrs.

A study records in its user attrs (JSON, read back on resume):

* ``hamjax.objectives``: the objective names;
* ``hamjax.space``: the space searched (:meth:`hamjax.tune.Space.to_dict`);
* ``hamjax.execution``: how the member axis ran (vmap, chunked or
  sequential; :class:`hamjax.search.population.Population`), reused when the
  study resumes so that one seed gives the same results whatever the load;
* ``hamjax.narrowed``: the narrowed space, when the search narrowed it.

A trial whose training diverged is told FAIL with the user attr
``hamjax.diverged``; it counts against the budget like COMPLETE and PRUNED
trials, while a FAIL without it (a worker that died) does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hamjax.tune.samplers import directions
from hamjax.tune.storage import create_or_load_study

EXECUTION_ATTR = "hamjax.execution"
SPACE_ATTR = "hamjax.space"
OBJECTIVES_ATTR = "hamjax.objectives"
NARROWED_ATTR = "hamjax.narrowed"
DIVERGED_ATTR = "hamjax.diverged"
DEFAULT_STUDY = "hamjax-tune"


def open_study(objectives: Sequence[str], *, storage, study_name: str | None, sampler, pruner, space):
    """Create the study, or load it when ``storage`` already holds ``study_name``.

    Args:
      objectives: the objective names (:func:`hamjax.tune.samplers.check_objectives`).
      storage: an Optuna storage, a URL (:func:`hamjax.tune.storage.open_storage`), or ``None`` (in memory).
      study_name: the study's name (``None``: :data:`DEFAULT_STUDY`, so running again resumes it).
      sampler, pruner: the Optuna sampler and pruner.
      space: the :class:`hamjax.tune.Space`.

    Returns:
      An ``optuna.Study``.

    Raises:
      ValueError: the stored study has other directions, objectives or space.

    Examples:
      >>> import optuna
      >>> from hamjax.tune import Space
      >>> space = Space({"learning_rate": {"low": 1e-3, "high": 1e-1}})
      >>> study = open_study(("accuracy",), storage=None, study_name="s", sampler=None, pruner=None, space=space)
      >>> study.user_attrs["hamjax.objectives"]
      ['accuracy']
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted = directions(objectives)
    name = DEFAULT_STUDY if study_name is None else study_name
    try:
        study = create_or_load_study(storage, name, wanted, sampler=sampler, pruner=pruner)
    except ValueError as err:
        if "directions" not in str(err):
            raise
        raise ValueError(
            f"tune: {err}; objectives {list(objectives)} need {wanted}: use the objectives it was created with "
            "or another study name"
        ) from None
    attrs = study.user_attrs
    recorded = attrs.get(OBJECTIVES_ATTR)
    if recorded is not None and list(recorded) != list(objectives):
        raise ValueError(f"tune: study {study.study_name!r} was run with objectives {recorded}, not {list(objectives)}")
    if SPACE_ATTR in attrs and attrs[SPACE_ATTR] != _json_space(space):
        raise ValueError(
            f"tune: study {study.study_name!r} searched the space {attrs[SPACE_ATTR]}, not {_json_space(space)}; "
            "use another study name for another space"
        )
    if recorded is None:
        study.set_user_attr(OBJECTIVES_ATTR, list(objectives))
    if SPACE_ATTR not in attrs:
        study.set_user_attr(SPACE_ATTR, _json_space(space))
    return study


def _json_space(space) -> dict:
    """The space as JSON would give it back (choices as lists)."""
    return {
        name: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()} if isinstance(d, Mapping) else d
        for name, d in space.to_dict().items()
    }


def recorded_execution(study, execution: str | None) -> str:
    """The execution to use: the study's recorded one, or ``execution`` (``"auto"``: chosen by timing later).

    ``None`` takes the recorded one, else ``"vmap"``.

    Raises:
      ValueError: ``execution`` is fixed and differs from the recorded one.

    Examples:
      >>> import optuna
      >>> study = optuna.create_study()
      >>> study.set_user_attr("hamjax.execution", "vmap")
      >>> recorded_execution(study, "auto"), recorded_execution(optuna.create_study(), None)
      ('vmap', 'vmap')
    """
    recorded = study.user_attrs.get(EXECUTION_ATTR)
    if recorded is None:
        return "vmap" if execution is None else execution
    if execution in (None, "auto", recorded):
        return recorded
    raise ValueError(
        f"tune: study {study.study_name!r} ran with execution {recorded!r}; pass execution={recorded!r} "
        f"(or 'auto') to resume it, not {execution!r}, or use another study name"
    )


def counted_trials(study) -> int:
    """The trials that count against the budget: COMPLETE, PRUNED, and FAIL by divergence.

    Examples:
      >>> import optuna
      >>> study = optuna.create_study()
      >>> study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
      >>> counted_trials(study)
      3
    """
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(
        t.state in counted or (t.state == TrialState.FAIL and bool(t.user_attrs.get(DIVERGED_ATTR)))
        for t in study.get_trials(deepcopy=False)
    )


def warm_start(study, space, enqueue, *, count: int) -> int:
    """Enqueue starting points: param dicts, or the best trials of an earlier study.

    Args:
      study: the study to enqueue into.
      space: its :class:`hamjax.tune.Space`: names outside it are dropped,
        values outside its ranges skip the point.
      enqueue: a sequence of ``name -> value`` dicts, or an ``optuna.Study``
        whose best ``count`` COMPLETE trials (by its first objective) are taken.
      count: how many trials to take from a study.

    Returns:
      The number of points enqueued (a point already in the study is not enqueued again).

    Examples:
      >>> import optuna
      >>> from hamjax.tune import Space
      >>> study = optuna.create_study(direction="maximize")
      >>> warm_start(study, Space({"learning_rate": {"low": 1e-3, "high": 1e-1}}), [{"learning_rate": 0.01}], count=1)
      1
    """
    import optuna

    if enqueue is None:
        return 0
    if isinstance(enqueue, optuna.Study):
        from optuna.trial import TrialState

        done = [t for t in enqueue.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        sign = -1.0 if enqueue.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        done.sort(key=lambda t: sign * t.values[0])
        points = [t.params for t in done[:count]]
    elif isinstance(enqueue, Sequence) and not isinstance(enqueue, str):
        points = list(enqueue)
    else:
        raise ValueError(
            f"tune: enqueue must be a list of param dicts or an optuna.Study, got {type(enqueue).__name__}"
        )
    queued = 0
    for point in points:
        if not isinstance(point, Mapping):
            raise ValueError(f"tune: enqueue entries must be dicts of param values, got {point!r}")
        params = {n: v for n, v in point.items() if n in space.dimensions}
        if not params or not all(_fits(space.dimensions[n], v) for n, v in params.items()):
            continue
        study.enqueue_trial(params, skip_if_exists=True)
        queued += 1
    return queued


def _fits(dimension, value) -> bool:
    if dimension.choices is not None:
        return value in dimension.choices
    return isinstance(value, int | float) and not isinstance(value, bool) and dimension.low <= value <= dimension.high


def narrow(study, space, *, after: int, quantile: float):
    """Narrow the search around the top ``quantile`` of COMPLETE trials, once ``after`` trials count.

    Done once per study: the narrowed space is recorded in the user attr
    ``hamjax.narrowed`` (``{"after", "quantile", "space"}``), and a resumed
    study reads it back.

    Args:
      study: the study.
      space: the :class:`hamjax.tune.Space` it searches.
      after: trials that must count (:func:`counted_trials`) first.
      quantile: the share of COMPLETE trials, best by the first objective, to narrow around.

    Returns:
      The narrowed :class:`hamjax.tune.Space`, or ``None`` while it is too early
      (fewer than ``after`` trials, or fewer than two COMPLETE ones to span).

    Examples:
      >>> import optuna
      >>> from hamjax.tune import Space
      >>> space = Space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}})
      >>> study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
      >>> study.optimize(lambda t: -abs(t.suggest_float("learning_rate", 1e-4, 1e-1, log=True) - 1e-2), n_trials=20)
      >>> narrow(study, space, after=20, quantile=0.25).dimensions["learning_rate"].high < 0.1
      True
      >>> study.user_attrs["hamjax.narrowed"]["after"]
      20
    """
    import optuna
    from optuna.trial import TrialState

    recorded = study.user_attrs.get(NARROWED_ATTR)
    if recorded is not None:
        from hamjax.tune.space import Space

        return Space(recorded["space"], targets=space.targets, recipe=space.recipe)
    counted = counted_trials(study)
    if counted < after:
        return None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return None
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    done = sorted(done, key=lambda t: sign * t.values[0])
    top = done[: max(2, math.ceil(quantile * len(done)))]
    narrowed = space.narrowed([t.params for t in top])
    study.set_user_attr(NARROWED_ATTR, {"after": counted, "quantile": quantile, "space": _json_space(narrowed)})
    return narrowed
