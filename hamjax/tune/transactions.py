"""A batch of trials written to a SQL storage in one transaction, as Optuna's ``RDBStorage`` writes each.

Optuna's ``RDBStorage`` writes a trial in one transaction with a lookup per
parameter and attr; for a batch, :mod:`hamjax.tune.bookkeeping` writes the same
rows (Optuna's own model classes and encodings) for all its trials at once.
Both functions answer ``None``/``False`` without writing anything where the
storage is not SQL or this Optuna's tables are not the ones known, and the
caller then writes trial by trial through the public storage API.
"""

from __future__ import annotations


def create_in_one_transaction(study, templates, *, heartbeat: bool = False) -> list[int] | None:
    """A SQL storage's batch of new RUNNING trials in one transaction; ``None`` where its tables are not known.

    The rows are those Optuna's ``RDBStorage`` writes for a trial made from a
    template (the same model classes, the same encodings), without its
    per-parameter lookups: the mirror already checked each distribution
    against the stored ones. Numbers are counted after the rows are written,
    under the study's row lock (PostgreSQL) or the database's write lock
    (SQLite), as Optuna counts them.

    Args:
      study: an ``optuna.Study``.
      templates: ``optuna.trial.FrozenTrial`` s to write (state RUNNING, params, attrs).
      heartbeat: also write each trial's first heartbeat.

    Returns:
      The new trials' ids in the order of ``templates``, or ``None`` (nothing written).

    Examples:
      >>> import optuna
      >>> from optuna.trial import TrialState
      >>> from hamjax.tune.storage import create_or_load_study
      >>> study = create_or_load_study("sqlite:///:memory:", "t", ["minimize"])
      >>> space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
      >>> templates = [
      ...     optuna.trial.create_trial(state=TrialState.RUNNING, params={"x": x}, distributions=space) for x in (0.25, 0.5)
      ... ]
      >>> ids = create_in_one_transaction(study, templates)
      >>> [(t.number, t.params["x"], t.state.name) for t in study.trials]
      [(0, 0.25, 'RUNNING'), (1, 0.5, 'RUNNING')]
      >>> finish_in_one_transaction(study, [(ids[0], TrialState.COMPLETE, [1.0]), (ids[1], TrialState.FAIL, None)])
      True
      >>> [(t.state.name, t.value) for t in study.trials]
      [('COMPLETE', 1.0), ('FAIL', None)]
      >>> create_in_one_transaction(create_or_load_study(None, "m", ["minimize"]), templates) is None
      True
    """
    import json

    try:
        import sqlalchemy
        from optuna.distributions import distribution_to_json
        from optuna.storages._rdb import models
    except ImportError:
        return None
    factory = getattr(getattr(study._storage, "_backend", None), "scoped_session", None)
    if factory is None or not all(
        hasattr(models, name)
        for name in ("StudyModel", "TrialModel", "TrialParamModel", "TrialSystemAttributeModel", "TrialHeartbeatModel")
    ):
        return None
    session = factory()
    try:
        models.StudyModel.find_or_raise_by_id(study._study_id, session, for_update=True)
        rows = [
            models.TrialModel(study_id=study._study_id, number=None, state=t.state, datetime_start=t.datetime_start)
            for t in templates
        ]
        session.add_all(rows)
        session.flush()  # ids assigned, and the write lock held until the commit
        first = min(row.trial_id for row in rows)
        count = sqlalchemy.func.count(models.TrialModel.trial_id)
        earlier = session.query(count).filter(
            models.TrialModel.study_id == study._study_id, models.TrialModel.trial_id < first
        )
        base = earlier.scalar()
        for row, template in zip(sorted(rows, key=lambda r: r.trial_id), templates, strict=True):
            row.number = base
            base += 1
            for name, value in template.params.items():
                dist = template.distributions[name]
                session.add(
                    models.TrialParamModel(
                        trial_id=row.trial_id,
                        param_name=name,
                        param_value=dist.to_internal_repr(value),
                        distribution_json=distribution_to_json(dist),
                    )
                )
            for model, attrs in (
                (models.TrialSystemAttributeModel, template.system_attrs),
                (models.TrialUserAttributeModel, template.user_attrs),
            ):
                for key, value in attrs.items():
                    session.add(model(trial_id=row.trial_id, key=key, value_json=json.dumps(value)))
            if heartbeat:
                session.add(models.TrialHeartbeatModel(trial_id=row.trial_id))
        session.commit()
        return [row.trial_id for row in sorted(rows, key=lambda r: r.trial_id)]
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def finish_in_one_transaction(study, writes) -> bool:
    """Finish a SQL storage's trials in one transaction, as ``RDBStorage.set_trial_state_values`` does each.

    A trial already finished (failed as stale by another worker and enqueued
    again) is left as it is. Returns False where the storage is not SQL or its
    tables are not the ones known (nothing written).

    Args:
      study: an ``optuna.Study``.
      writes: ``(trial_id, state, values)`` per trial; ``values`` a list of
        floats or ``None``.

    Returns:
      Whether the trials were written (see :func:`create_in_one_transaction` for an example).
    """
    import datetime

    try:
        from optuna.storages._rdb import models
    except ImportError:
        return False
    factory = getattr(getattr(study._storage, "_backend", None), "scoped_session", None)
    if factory is None or not hasattr(getattr(models, "TrialValueModel", None), "value_to_stored_repr"):
        return False
    session = factory()
    try:
        ids = [trial_id for trial_id, _, _ in writes]
        query = session.query(models.TrialModel).filter(models.TrialModel.trial_id.in_(ids)).with_for_update()
        rows = {row.trial_id: row for row in query.all()}
        for trial_id, state, values in writes:
            row = rows[trial_id]
            if row.state.is_finished():
                continue
            for objective, value in enumerate(values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                session.add(
                    models.TrialValueModel(trial_id=trial_id, objective=objective, value=stored, value_type=kind)
                )
            row.state = state
            row.datetime_complete = datetime.datetime.now()
        session.commit()
        return True
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
