import optuna
import pytest

from hamjax.tune import Space, study

SPACE = Space({"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}})


def open_(storage, name="s", objectives=("accuracy",), space=SPACE):
    return study.open_study(objectives, storage=storage, study_name=name, sampler=None, pruner=None, space=space)


def test_records_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    s = open_(url)
    assert s.user_attrs["hamjax.objectives"] == ["accuracy"]
    assert s.user_attrs["hamjax.space"] == {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}}
    s.set_user_attr("hamjax.execution", "chunked")
    again = open_(url)
    assert study.recorded_execution(again, "auto") == "chunked"
    assert study.recorded_execution(again, "chunked") == "chunked"
    assert study.recorded_execution(again, None) == "chunked"
    assert study.recorded_execution(optuna.create_study(), None) == "vmap"
    assert study.recorded_execution(optuna.create_study(), "auto") == "auto"
    with pytest.raises(ValueError, match="ran with execution 'chunked'; pass execution='chunked'"):
        study.recorded_execution(again, "vmap")
    with pytest.raises(ValueError, match="directions"):
        open_(url, objectives=("accuracy", "size"))
    with pytest.raises(ValueError, match="searched the space"):
        open_(url, space=Space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}}))


def test_default_name_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    first = study.open_study(("accuracy",), storage=url, study_name=None, sampler=None, pruner=None, space=SPACE)
    first.set_user_attr("x", 1)
    second = study.open_study(("accuracy",), storage=url, study_name=None, sampler=None, pruner=None, space=SPACE)
    assert second.study_name == study.DEFAULT_STUDY and second.user_attrs["x"] == 1


def test_counted_trials():
    s = optuna.create_study(direction="maximize")
    for value in (0.1, 0.2):
        s.tell(s.ask(), value)
    s.tell(s.ask(), state=optuna.trial.TrialState.PRUNED)
    diverged = s.ask()
    diverged.set_user_attr(study.DIVERGED_ATTR, True)
    s.tell(diverged, state=optuna.trial.TrialState.FAIL)
    s.tell(s.ask(), state=optuna.trial.TrialState.FAIL)  # a dead worker's trial: retried, not counted
    s.ask()  # running
    assert study.counted_trials(s) == 4


def test_warm_start():
    earlier = optuna.create_study(direction="maximize")
    dists = SPACE.distributions()
    for lr, value in ((0.002, 0.5), (0.05, 0.9), (0.01, 0.7)):
        earlier.add_trial(optuna.trial.create_trial(params={"learning_rate": lr}, distributions=dists, value=value))
    s = open_(None)
    assert study.warm_start(s, SPACE, earlier, count=2) == 2
    assert [s.ask(dists).params["learning_rate"] for _ in range(2)] == [0.05, 0.01]
    # outside the space or naming nothing in it: skipped
    assert study.warm_start(open_(None), SPACE, [{"learning_rate": 5.0}, {"momentum": 0.9}], count=2) == 0
    with pytest.raises(ValueError, match="enqueue entries must be dicts"):
        study.warm_start(open_(None), SPACE, [0.01], count=1)
