import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hamjax import tune

SPACE = {
    "learning_rate": {"low": 3e-3, "high": 1e-1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "batch_size": 128,
}


def init(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, 16)) / 8.0,
        "b1": jnp.zeros(16),
        "w2": jax.random.normal(k2, (16, 10)) / 4.0,
        "b2": jnp.zeros(10),
    }


def mlp(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None])
    return h @ p["w2"] + p["b2"][None]


def tune_digits(digits, space=SPACE, **kw):
    kw = {"trials": 8, "batch": 4, "epochs": 2, "execution": "vmap", "progress": False, **kw}
    return tune.run(mlp, init, digits, space, **kw)


@pytest.fixture(scope="module")
def plain(digits):
    return tune_digits(digits)


def test_every_trial_trains_and_is_told(plain):
    trials = plain.study.trials
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert plain.trials_run == 8 and plain.member_epochs == 16 and plain.stopped == "budget"
    assert plain.best_values["accuracy"] > 0.7
    assert plain.best_values["accuracy"] == max(t.value for t in trials)
    assert len({t.params["learning_rate"] for t in trials}) == 8  # constant liar: no repeated points
    assert plain.study.user_attrs["hamjax.execution"] == "vmap" == plain.execution
    assert plain.best_params["batch_size"] == 128
    # every member reports each epoch
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)


def test_same_seed_same_results(digits, plain):
    again = tune_digits(digits)
    assert [t.params for t in again.study.trials] == [t.params for t in plain.study.trials]
    np.testing.assert_array_equal([t.value for t in again.study.trials], [t.value for t in plain.study.trials])


def test_default_execution_is_vmap_and_recorded(digits):
    result = tune_digits(digits, trials=2, batch=2, epochs=1, execution=None)
    assert result.execution == "vmap" == result.study.user_attrs["hamjax.execution"]


def test_alias_is_run():
    assert tune.tune is tune.run


def test_pruned_slots_are_refilled(digits):
    result = tune_digits(digits, trials=12, batch=4, epochs=3, pruner="hyperband", sampler="random")
    states = [t.state for t in result.study.trials]
    assert len(states) == 12 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = states.count(TrialState.PRUNED)
    assert pruned >= 1
    assert result.member_epochs < 12 * 3
    # a pruned trial trained fewer epochs than the budget: its last report is its last epoch
    for t in result.study.trials:
        assert max(t.intermediate_values) == 3 or t.state == TrialState.PRUNED
    assert result.member_epochs == sum(max(t.intermediate_values) for t in result.study.trials)


def test_buckets_train_apart(digits):
    space = {**SPACE, "batch_size": {"choices": [64, 128]}}
    result = tune_digits(digits, space, sampler="random")
    sizes = {t.params["batch_size"] for t in result.study.trials}
    assert sizes == {64, 128}
    assert all(t.state == TrialState.COMPLETE and t.value > 0.3 for t in result.study.trials)


def test_diverged_trial_fails_and_the_study_goes_on(digits):
    space = {"learning_rate": {"choices": [1e-2, 1e38]}, "label_smoothing": {"choices": [0.0, 0.1]}}
    result = tune_digits(digits, space, trials=6, batch=3, epochs=1, sampler="grid")
    by_rate = {}
    for t in result.study.trials:
        by_rate.setdefault(t.params["learning_rate"], set()).add(t.state)
    assert by_rate[1e38] == {TrialState.FAIL}
    assert by_rate[1e-2] == {TrialState.COMPLETE}
    assert len(result.study.trials) == 4  # the grid's size
    assert all(t.user_attrs.get("hamjax.diverged") for t in result.study.trials if t.state == TrialState.FAIL)


def test_multi_objective(digits):
    space = {**SPACE, "sparsity": {"low": 0.0, "high": 0.9}}
    result = tune_digits(digits, space, objectives="accuracy,size,latency", sampler="nsga3")
    assert [d.name for d in result.study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    sizes = [t.values[1] for t in result.study.trials]
    dense = sum(a.size for a in jax.tree.leaves(init(jax.random.key(0))))
    assert all(0 < s < dense for s in sizes) and len(set(sizes)) > 1
    latencies = {t.values[2] for t in result.study.trials}
    assert len(latencies) == 1 and latencies.pop() > 0  # one param shape: measured once
    assert set(result.best_values) == {"accuracy", "size", "latency"}


def test_distillation_hyperparameters_need_and_use_a_teacher(digits, plain):
    space = {"temperature": {"low": 1.0, "high": 8.0}, "alpha": {"low": 0.0, "high": 1.0}, "learning_rate": 0.05}
    with pytest.raises(ValueError, match=r"tune: \['alpha', 'temperature'\] need teacher="):
        tune_digits(digits, space, trials=2, batch=2, epochs=1)
    teacher = (mlp, init(jax.random.key(1)))
    result = tune_digits(digits, space, trials=4, batch=4, epochs=1, teacher=teacher)
    assert all(t.state == TrialState.COMPLETE for t in result.study.trials)
    assert len({t.value for t in result.study.trials}) > 1


def test_resume_counts_earlier_trials_and_reuses_execution(digits, tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    first = tune_digits(digits, trials=4, batch=4, epochs=1, storage=url, study_name="s", execution="sequential")
    assert len(first.study.trials) == 4
    second = tune_digits(digits, trials=6, batch=2, epochs=1, storage=url, study_name="s", execution="auto")
    assert second.trials_run == 2 and second.execution == "sequential"
    third = tune_digits(digits, trials=7, batch=1, epochs=1, storage=url, study_name="s", execution=None)
    assert third.trials_run == 1 and third.execution == "sequential"
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 7
    with pytest.raises(ValueError, match="ran with execution 'sequential'"):
        tune_digits(digits, trials=8, batch=2, epochs=1, storage=url, study_name="s", execution="vmap")
    with pytest.raises(ValueError, match="directions"):
        tune_digits(digits, trials=8, batch=2, epochs=1, storage=url, study_name="s", objectives="accuracy,size")


def test_warm_start_and_convergence_stop(digits, plain):
    best = plain.best_params
    result = tune_digits(digits, trials=16, batch=2, epochs=1, enqueue=plain.study, patience=2, min_delta=0.5)
    first = result.study.trials[0]
    assert first.params["learning_rate"] == best["learning_rate"]
    assert result.stopped == "converged" and len(result.study.trials) < 16
    listed = tune_digits(digits, trials=4, batch=2, epochs=1, enqueue=[{"learning_rate": 0.05, "other": 1}])
    assert listed.study.trials[0].params["learning_rate"] == 0.05


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"batch": 0}, "batch must be an integer in"),
        ({"batch": 9}, r"batch must be an integer in \[1, 8\]"),
        ({"sampler": "bohb"}, "sampler must be one of"),
        ({"pruner": "early"}, "pruner must be one of"),
        ({"objectives": "size"}, "must name 'accuracy'"),
        ({"objectives": "accuracy,size", "pruner": "median"}, "needs one objective"),
        ({"sampler": "nsga2"}, "is for several objectives"),
        ({"sampler": "grid"}, "grid sampler: learning_rate needs choices or a step"),
        ({"execution": "parallel"}, "execution must be one of"),
        ({"enqueue": "lr=0.1"}, "enqueue must be a list"),
    ],
)
def test_bad_arguments(digits, kw, message):
    with pytest.raises(ValueError, match=message):
        tune_digits(digits, **kw)


def test_narrowing_after_n_trials(digits):
    space = {**SPACE, "learning_rate": {"low": 1e-4, "high": 1.0, "log": True}}
    result = tune_digits(digits, space, trials=12, batch=4, epochs=1, sampler="random", narrow_after=4,
                         narrow_quantile=0.5)  # fmt: skip
    record = result.study.user_attrs["hamjax.narrowed"]
    assert record["after"] == 4 and record["quantile"] == 0.5
    low, high = record["space"]["learning_rate"]["low"], record["space"]["learning_rate"]["high"]
    assert 1e-4 <= low < high <= 1.0 and (low, high) != (1e-4, 1.0)
    first = sorted(result.study.trials, key=lambda t: t.number)[:4]
    best = sorted(first, key=lambda t: -t.value)[:2]
    assert low <= min(t.params["learning_rate"] for t in best) and high >= max(t.params["learning_rate"] for t in best)
    later = [t for t in result.study.trials if t.number >= 4]
    assert len(later) == 8 and all(low <= t.params["learning_rate"] <= high for t in later)


def test_an_interrupted_run_leaves_no_trial_running(digits, monkeypatch):
    from hamjax.search.population import Population

    calls = []

    def train(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    original = Population.train_epochs
    monkeypatch.setattr(Population, "train_epochs", train)
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(KeyboardInterrupt):
        tune_digits(digits, trials=8, batch=4, epochs=2, storage=storage, study_name="cut")
    states = [t.state for t in optuna.load_study(study_name="cut", storage=storage).trials]
    assert states == [TrialState.COMPLETE] * 4 + [TrialState.FAIL] * 4  # a call trains a trial's 2 epochs
    monkeypatch.setattr(Population, "train_epochs", original)
    resumed = tune_digits(digits, trials=8, batch=4, epochs=2, storage=storage, study_name="cut")
    assert [t.state for t in resumed.study.trials].count(TrialState.COMPLETE) == 8


def test_traces_do_not_grow_with_trials(digits):
    traces = []

    def model():
        def counted(p, x):
            traces.append(x.shape)
            return mlp(p, x)

        return counted

    def traced(fn, trials):
        traces.clear()
        tune.run(fn, init, digits, SPACE, trials=trials, batch=4, epochs=1, execution="vmap", progress=False)
        return len(traces)

    first = traced(model(), 4)
    assert first == traced(model(), 12) > 0  # one compile per shape bucket, whatever the trials
    same = model()
    traced(same, 4)
    assert traced(same, 4) == 0  # a second study of one model in one process compiles nothing again


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["median", "percentile", "successive_halving", "wilcoxon"])
def test_every_pruner_in_the_loop(digits, pruner):
    result = tune_digits(digits, trials=12, batch=4, epochs=3, pruner=pruner, sampler="random")
    trials = result.study.trials
    assert len(trials) == 12 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert result.member_epochs == sum(max(t.intermediate_values) for t in trials)


def test_an_nnx_reference_model(digits):
    from tests.reference_models import random_model

    apply_fn, _, params = random_model("mlp", sizes=(64, 16, 10))
    space = {"learning_rate": {"low": 1e-2, "high": 1e-1, "log": True}, "weight_decay": {"low": 0.0, "high": 1e-2}}
    result = tune.run(apply_fn, params, digits, space, trials=4, batch=4, epochs=3, execution="vmap", progress=False)
    assert all(t.state == TrialState.COMPLETE for t in result.study.trials)
    assert result.best_values["accuracy"] > 0.5


def _spy_hparams(monkeypatch) -> list:
    """The hyperparameters of every Population.train_epochs call, recorded."""
    from hamjax.search.population import Population

    calls = []
    train_epochs = Population.train_epochs

    def spy(self, state, *args, **kw):
        calls.append({k: np.asarray(v) for k, v in state.hparams.items()})
        return train_epochs(self, state, *args, **kw)

    monkeypatch.setattr(Population, "train_epochs", spy)
    return calls


def test_a_cosine_schedule_decays_over_the_trials_steps_after_a_traced_warmup(digits, monkeypatch):
    from hamjax import data

    calls = _spy_hparams(monkeypatch)
    space = {"learning_rate": 1e-2, "warmup_steps": {"low": 0, "high": 30}, "schedule": "cosine", "batch_size": 64}
    result = tune_digits(digits, space=space, sampler="random", trials=4, batch=4, epochs=2)
    assert all(t.state == TrialState.COMPLETE for t in result.study.trials)
    steps = data.steps_per_epoch(len(digits.train.y), 64) * 2
    assert len(calls) == 1 and np.all(calls[0]["decay_steps"] == steps)  # one call: every trial's two epochs
    np.testing.assert_array_equal(sorted(calls[0]["warmup_steps"]), sorted(t.params["warmup_steps"] for t in
                                  result.study.trials))  # fmt: skip
    assert result.best_values["accuracy"] > 0.5


@pytest.mark.slow
def test_warmup_mixup_traced_and_schedules_bucketed(digits, monkeypatch):
    from hamjax import data

    calls = _spy_hparams(monkeypatch)
    space = {"learning_rate": 1e-2, "warmup_steps": {"low": 0, "high": 30}, "mixup": {"low": 0.0, "high": 0.4},
             "schedule": {"choices": ["constant", "cosine"]}, "batch_size": 128}  # fmt: skip
    result = tune_digits(digits, space=space, sampler="random", trials=6, batch=3, epochs=1)
    trials = result.study.trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    schedules = {t.params["schedule"] for t in trials}
    assert schedules == {"constant", "cosine"}  # both buckets ran (seed 0)
    steps = data.steps_per_epoch(len(digits.train.y), 128)
    cosine = [c for c in calls if "decay_steps" in c]
    assert cosine and all(np.all(c["decay_steps"] == steps) for c in cosine)
    assert len(cosine) < len(calls)  # the constant bucket's calls carry no decay
    assert all({"warmup_steps", "mixup"} <= set(c) for c in calls)
    warmups = {t.params["warmup_steps"] for t in trials}
    assert len(warmups) > 2 and any(w in c["warmup_steps"] for c in calls for w in warmups)


def _width_spy(monkeypatch):
    """(shapes of w1 per train_epochs call, widths built, the builder)."""
    from hamjax.search.population import Population

    shapes, built = [], []
    train_epochs = Population.train_epochs

    def spy(self, state, *args, **kw):
        shapes.append(state.params["w1"].shape[1:])
        return train_epochs(self, state, *args, **kw)

    monkeypatch.setattr(Population, "train_epochs", spy)

    def model(width):
        built.append(width)

        def make(key):
            k1, k2 = jax.random.split(key)
            return {"w1": jax.random.normal(k1, (64, width)) / 8.0, "b1": jnp.zeros(width),
                    "w2": jax.random.normal(k2, (width, 10)) / 4.0, "b2": jnp.zeros(10)}  # fmt: skip

        return mlp, make

    return shapes, built, model


def test_a_fixed_width_builds_its_model_once(digits, monkeypatch):
    shapes, built, model = _width_spy(monkeypatch)
    space = {"learning_rate": {"low": 1e-2, "high": 1e-1, "log": True}, "width": 12}
    result = tune.run(None, None, digits, space, model=model, trials=4, batch=4, epochs=1, execution="vmap",
                      progress=False)  # fmt: skip
    assert built == [12] and shapes == [(64, 12)] and result.best_values["accuracy"] > 0.3
    with pytest.raises(ValueError, match=r"tune: \['width'\] change the model: give model="):
        tune.run(mlp, init, digits, space, trials=2, batch=2, progress=False)


@pytest.mark.slow
def test_widths_are_buckets_of_models_the_builder_makes(digits, monkeypatch):
    shapes, built, model = _width_spy(monkeypatch)
    space = {"learning_rate": {"low": 1e-2, "high": 1e-1, "log": True}, "width": {"choices": [8, 24]}}
    result = tune.run(None, None, digits, space, model=model, trials=6, batch=3, epochs=1, sampler="random",
                      execution="vmap", progress=False)  # fmt: skip
    trials = result.study.trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(built) == [8, 24]  # each width built once
    assert set(shapes) == {(64, 8), (64, 24)}
    assert result.best_values["accuracy"] > 0.5


def _structure_spy(monkeypatch):
    """(per train_epochs call: (layers, member count), structures built, a builder of tiny MLPs)."""
    from hamjax.search.population import Population

    calls, built = [], []
    train_epochs = Population.train_epochs

    def spy(self, state, *args, **kw):
        calls.append((len(state.params), jax.tree.leaves(state.params)[0].shape[0]))
        return train_epochs(self, state, *args, **kw)

    monkeypatch.setattr(Population, "train_epochs", spy)

    def model(depth, activation):
        built.append((depth, activation))
        act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[activation]

        def apply(p, x):
            h = x.reshape(x.shape[0], -1)
            for i in range(depth):
                h = act(h @ p[f"w{i}"])
            return h @ p["out"]

        def make(key):
            keys = jax.random.split(key, depth + 1)
            sizes = [64] + [8] * depth
            layers = {
                f"w{i}": jax.random.normal(keys[i], (sizes[i], 8)) / jnp.sqrt(float(sizes[i])) for i in range(depth)
            }
            return {**layers, "out": jax.random.normal(keys[-1], (8, 10)) / 4.0}

        return apply, make

    return calls, built, model


@pytest.mark.slow
def test_depth_by_activation_buckets_train_once_each_and_report_per_trial(digits, monkeypatch):
    calls, built, model = _structure_spy(monkeypatch)
    space = {"learning_rate": {"choices": [0.03, 0.1]}, "depth": {"choices": [1, 2]},
             "activation": {"choices": ["relu", "tanh"]}}  # fmt: skip
    result = tune.run(None, None, digits, space, model=model, trials=8, batch=8, epochs=1, sampler="grid",
                      execution="vmap", progress=False)  # fmt: skip
    trials = result.study.trials
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE and t.value > 0.1 for t in trials)
    assert sorted(built) == [(1, "relu"), (1, "tanh"), (2, "relu"), (2, "tanh")]  # each structure built once
    assert sorted(calls) == [(2, 2), (2, 2), (3, 2), (3, 2)]  # one call per bucket, its two trials together
    assert {(t.params["depth"], t.params["activation"], t.params["learning_rate"]) for t in trials} == {
        (d, a, lr) for d in (1, 2) for a in ("relu", "tanh") for lr in (0.03, 0.1)
    }
    assert len({t.value for t in trials}) > 1


def test_a_builder_without_a_structural_keyword_is_refused_before_the_study(digits, monkeypatch):
    _, built, model = _structure_spy(monkeypatch)
    space = {"learning_rate": {"low": 1e-2, "high": 1e-1}, "depth": 2, "width": {"choices": [8, 16]}}
    with pytest.raises(ValueError, match=r"tune: the space searches \['width'\], but model\(depth, activation\)"):
        tune.run(None, None, digits, space, model=model, trials=2, batch=2, progress=False)
    assert built == []


def test_a_builder_that_fails_fails_its_asked_trials(digits):
    def model(depth):
        raise ValueError(f"no model of depth {depth}")

    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(ValueError, match="no model of depth 3"):
        tune.run(None, None, digits, {"depth": {"choices": [3]}}, model=model, trials=2, batch=2, storage=storage,
                 study_name="s", execution="vmap", progress=False)  # fmt: skip
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]  # none left RUNNING
