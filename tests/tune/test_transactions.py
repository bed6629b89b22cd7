"""A batch of trials created and finished in one transaction each, read back through Optuna's own API."""

import optuna
from optuna.trial import TrialState

from hamjax.tune.storage import create_or_load_study
from hamjax.tune.transactions import create_in_one_transaction, finish_in_one_transaction

_SPACE = {"x": optuna.distributions.FloatDistribution(0.0, 1.0), "n": optuna.distributions.IntDistribution(1, 4)}


def _templates(values):
    return [
        optuna.trial.create_trial(
            state=TrialState.RUNNING, params={"x": x, "n": n}, distributions=_SPACE, user_attrs={"k": i}
        )
        for i, (x, n) in enumerate(values)
    ]


def test_a_batch_is_created_and_finished_as_optuna_would_write_each_trial(tmp_path):
    study = create_or_load_study(f"sqlite:///{tmp_path / 's.db'}", "t", ["maximize"])
    study.add_trial(optuna.trial.create_trial(params={"x": 0.1, "n": 1}, distributions=_SPACE, value=0.5))
    ids = create_in_one_transaction(study, _templates([(0.25, 2), (0.5, 3), (0.75, 4)]))
    assert ids is not None and len(set(ids)) == 3
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert [t.number for t in running] == [1, 2, 3]  # numbered after the trial already there, in order
    assert [(t.params, t.user_attrs) for t in running] == [
        ({"x": 0.25, "n": 2}, {"k": 0}),
        ({"x": 0.5, "n": 3}, {"k": 1}),
        ({"x": 0.75, "n": 4}, {"k": 2}),
    ]
    assert finish_in_one_transaction(
        study,
        [(ids[0], TrialState.COMPLETE, [0.9]), (ids[1], TrialState.FAIL, None), (ids[2], TrialState.PRUNED, None)],
    )
    states = {t.number: (t.state, t.values) for t in study.get_trials(deepcopy=False)}
    assert states[1] == (TrialState.COMPLETE, [0.9]) and states[2][0] == TrialState.FAIL
    assert states[3][0] == TrialState.PRUNED and study.best_trial.number == 1


def test_a_storage_that_is_not_sql_writes_nothing():
    study = optuna.create_study(direction="maximize")
    assert create_in_one_transaction(study, _templates([(0.5, 1)])) is None
    assert finish_in_one_transaction(study, [(0, TrialState.COMPLETE, [1.0])]) is False
    assert study.trials == []
