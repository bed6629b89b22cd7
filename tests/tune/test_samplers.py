import importlib.util

import optuna
import pytest

from hamjax.tune import Space, samplers

SPACE = Space({"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}, "batch_size": {"choices": [64, 128]}})
GRID = Space({"bits": {"low": 4, "high": 8, "step": 2}, "batch_size": {"choices": [64, 128]}})


@pytest.mark.parametrize(
    "name, objectives, kind",
    [
        ("tpe", ("accuracy",), "TPESampler"),
        ("random", ("accuracy",), "RandomSampler"),
        ("qmc", ("accuracy",), "QMCSampler"),
        ("nsga2", ("accuracy", "size"), "NSGAIISampler"),
        ("nsga3", ("accuracy", "size", "latency"), "NSGAIIISampler"),
    ],
)
def test_samplers_by_name(name, objectives, kind):
    sampler = samplers.make_sampler(name, seed=0, space=SPACE, batch=8, objectives=objectives)
    assert type(sampler).__name__ == kind


def test_tpe_lies_constantly():
    sampler = samplers.make_sampler("tpe", seed=0, space=SPACE, batch=8, objectives=("accuracy",))
    assert sampler._constant_liar


def test_grid_covers_the_space_and_does_not_stop_the_study():
    sampler = samplers.make_sampler("grid", seed=0, space=GRID, batch=2, objectives=("accuracy",))
    assert isinstance(sampler, optuna.samplers.GridSampler) and samplers.grid_size(GRID) == 6
    study = optuna.create_study(sampler=sampler, direction="maximize")
    seen = []
    for _ in range(6):
        trial = study.ask(GRID.distributions())
        seen.append((trial.params["bits"], trial.params["batch_size"]))
        study.tell(trial, 0.5)  # Optuna's own grid sampler raises here on the last point
    assert sorted(seen) == sorted((b, s) for b in (4, 6, 8) for s in (64, 128))


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed: gp is allowed")
def test_gp_without_torch_is_refused():
    with pytest.raises(ValueError, match="sampler 'gp' needs torch"):
        samplers.make_sampler("gp", seed=0, space=SPACE, batch=8, objectives=("accuracy",))


@pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes is installed")
def test_cmaes_without_its_package_is_refused():
    with pytest.raises(ValueError, match="sampler 'cmaes' needs the cmaes package"):
        samplers.make_sampler("cmaes", seed=0, space=SPACE, batch=8, objectives=("accuracy",))


@pytest.mark.parametrize(
    "name, kind",
    [
        (None, "NopPruner"),
        ("none", "NopPruner"),
        ("median", "MedianPruner"),
        ("percentile", "PercentilePruner"),
        ("successive_halving", "SuccessiveHalvingPruner"),
        ("hyperband", "HyperbandPruner"),
        ("wilcoxon", "WilcoxonPruner"),
    ],
)
def test_pruners_by_name(name, kind):
    assert type(samplers.make_pruner(name, epochs=9)).__name__ == kind


def test_objectives_and_directions():
    assert samplers.check_objectives("tune", ["size", "accuracy"]) == ("accuracy", "size")
    assert samplers.directions(("accuracy", "size", "latency")) == ["maximize", "minimize", "minimize"]
    with pytest.raises(ValueError, match="objectives must be one of"):
        samplers.check_objectives("tune", "accuracy,speed")
    with pytest.raises(ValueError, match="each name once"):
        samplers.check_objectives("tune", "accuracy,accuracy")
    with pytest.raises(ValueError, match="sampler must be one of"):
        samplers.make_sampler("bohb", seed=0, space=SPACE, batch=8, objectives=("accuracy",))
    with pytest.raises(ValueError, match="pruner must be one of"):
        samplers.make_pruner("asha", epochs=3)


def test_optuna_objects_pass_through():
    sampler, pruner = optuna.samplers.RandomSampler(seed=3), optuna.pruners.HyperbandPruner(reduction_factor=4)
    assert samplers.make_sampler(sampler, seed=0, space=SPACE, batch=8, objectives=("accuracy",)) is sampler
    assert samplers.make_pruner(pruner, epochs=9) is pruner


def test_judging_order_promotes_a_cohorts_top_share_as_a_synchronous_rung():
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    values = [0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6]
    trials = [study.ask() for _ in values]
    for trial, value in zip(trials, values, strict=True):
        trial.report(value, 1)
    order = samplers.judging_order(range(9), [0] * 9, values, pruner)
    assert sorted(order) == list(range(9))
    kept = {i for i in order if not trials[i].should_prune()}
    assert kept == {1, 4, 6}  # the top third, whatever the slots' order
    # cohorts by epoch; other pruners keep the order
    assert samplers.judging_order([0, 1, 2], [2, 1, 1], [0.9, 0.1, 0.5], pruner) == [2, 1, 0]
    assert samplers.judging_order([0, 1, 2], [0, 0, 0], [0.1, 0.9, 0.5], optuna.pruners.MedianPruner()) == [0, 1, 2]
