"""Data-parallel fit on simulated devices, multi-process fit on localhost, and their bad inputs.

The test process has one CPU device, so runs over 8 simulated devices (and
groups of processes) happen in subprocesses started with ``sys.executable``;
each writes its history and params to a file the test compares.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import hamjax
from hamjax.parallel import BATCH_AXIS, DataParallel, initialize, shard_by_size

TIMEOUT_S = 240

# One run of fit per entry of spec["runs"]; under spec["processes"] > 1 this process first joins the group.
_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    spec = json.loads(sys.argv[1])
    if spec.get("processes", 1) > 1:
        from hamjax.parallel import initialize
        initialize(f"127.0.0.1:{spec['port']}", spec["processes"], spec["process_id"], timeout_s=60,
                   local_device_count=spec["local_devices"])
    import jax, numpy as np
    from jax.experimental import multihost_utils
    import hamjax
    from hamjax.parallel import DataParallel, shard_by_size
    from hamjax.train import TrainConfig, fit

    ds = hamjax.data.load("digits", seed=0)
    apply_fn, params = hamjax.functional(
        hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10), dropout_rate=0.2))
    out = {}
    for run in spec["runs"]:
        cfg = TrainConfig(epochs=run.get("epochs", 2), batch_size=run.get("batch_size", 64), learning_rate=3e-3,
                          eval_every=5, checkpoint_every=7, data_parallel=run.get("data_parallel", False))
        parallel = None
        if run.get("devices"):
            rule = shard_by_size(run["devices"], min_size=64) if run.get("rule") else None
            parallel = DataParallel(jax.devices()[: run["devices"]], param_rule=rule)

        def callback(step, state, metrics, stop=run.get("stop_at")):
            if step == stop:
                os._exit(3)

        try:
            result = fit(apply_fn, params, ds, cfg, parallel=parallel, checkpoint_dir=run.get("ckpt"),
                         progress=False, callback=callback)
        except ValueError as err:
            out[run["name"]] = {"error": str(err)}
            continue
        leaves = jax.tree.leaves(result.state.params)
        out[run["name"]] = {
            "history": result.history,
            "resumed_from": result.resumed_from,
            "params": [np.asarray(multihost_utils.process_allgather(a, tiled=True)).tolist() for a in leaves],
            "specs": [str(getattr(a.sharding, "spec", None)) for a in leaves],
            "devices": len(leaves[0].sharding.device_set),
        }
    if jax.process_index() == 0:
        with open(spec["out"], "w") as f:
            json.dump(out, f)
    """
)


def _env(devices: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(os.path.dirname(hamjax.__file__)))
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, runs, *, devices=8, name="out") -> dict:
    script = tmp_path / "fit_script.py"
    script.write_text(_SCRIPT)
    out = tmp_path / f"{name}.json"
    spec = {"runs": runs, "out": str(out)}
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _group(tmp_path, runs, *, processes=2, local_devices=2, name="group") -> tuple[dict | None, list[int]]:
    """Runs the script as ``processes`` processes on 127.0.0.1; process 0's results and every exit status."""
    script = tmp_path / "fit_script.py"
    script.write_text(_SCRIPT)
    out, port = tmp_path / f"{name}.json", _free_port()
    procs = []
    for i in range(processes):
        spec = {"runs": runs, "out": str(out), "processes": processes, "process_id": i, "port": port}
        spec["local_devices"] = local_devices
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), json.dumps(spec)],
                env=_env(None),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    codes, errors = [], []
    try:
        for p in procs:
            _, err = p.communicate(timeout=TIMEOUT_S)
            codes.append(p.returncode)
            errors.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = json.loads(out.read_text()) if out.exists() else None
    return results, codes, errors


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def _curve(history) -> np.ndarray:
    return np.array([[h["train_loss"], h["val_loss"]] for h in history])


def _max_param_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """One subprocess over 8 simulated devices: an epoch on one device (checkpointed), on 8, and a bad batch."""
    tmp = tmp_path_factory.mktemp("eight")
    ckpt = tmp / "ckpt"
    runs = [
        {"name": "one", "epochs": 1, "ckpt": str(ckpt)},
        {"name": "eight", "epochs": 1, "data_parallel": True},
        {"name": "bad", "epochs": 1, "data_parallel": True, "batch_size": 100, "ckpt": str(ckpt)},
    ]
    return _run(tmp, runs), ckpt


def test_eight_devices_give_the_loss_curve_of_one(eight):
    results, _ = eight
    one, many = results["one"], results["eight"]
    assert one["devices"] == 1 and many["devices"] == 8
    assert len(one["history"]) == len(many["history"]) >= 4
    assert _rel(_curve(many["history"]), _curve(one["history"])) <= 1e-5
    assert _max_param_diff(many["params"], one["params"]) <= 1e-4
    assert set(many["specs"]) == {"P()"}  # replicated


@pytest.mark.slow
def test_sharded_params_follow_the_rule_and_train_the_same(tmp_path):
    results = _run(tmp_path, [{"name": "one"}, {"name": "rule", "devices": 8, "rule": True}])
    rule, one = results["rule"], results["one"]
    assert rule["devices"] == 8
    assert sorted(rule["specs"]) == ["P('batch',)", "P('batch',)", "P()", "P()"]  # kernels sharded, biases not
    assert _rel(_curve(rule["history"]), _curve(one["history"])) <= 1e-5


def test_batch_not_divisible_by_the_devices_is_refused_and_keeps_the_checkpoint(eight):
    results, ckpt = eight
    assert "batch_size=100 is not divisible by the 8 devices" in results["bad"]["error"]
    assert "fit" in results["bad"]["error"]
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert steps and steps[-1] == results["one"]["history"][-1]["step"]  # the earlier run's checkpoint is intact


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_as_a_group(tmp_path):
    ckpt = tmp_path / "group-ckpt"
    group = {"name": "group", "data_parallel": True, "ckpt": str(ckpt)}
    # Both processes stop at step 17, after the checkpoint of step 14: the group then resumes from it.
    results, codes, errors = _group(tmp_path, [{**group, "stop_at": 17}], name="stopped")
    # Process 0 exits with 3; process 1 too, or JAX ends it when it notices the coordinator gone first.
    assert codes[0] == 3 and codes[1] != 0, (codes, errors)
    assert results is None
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())[-1] == 14
    results, codes, errors = _group(tmp_path, [group], name="resumed")
    assert codes == [0, 0], errors
    single = _run(tmp_path, [{"name": "one"}], devices=None, name="single")["one"]
    resumed = results["group"]
    assert resumed["resumed_from"] == 14 and resumed["devices"] == 4
    assert _max_param_diff(resumed["params"], single["params"]) <= 1e-5
    # Validation losses match throughout; the training loss of the window the stop cut short has fewer steps.
    assert _rel(_curve(resumed["history"])[:, 1], _curve(single["history"])[:, 1]) <= 1e-5
    metadata = [p for p in ckpt.rglob("*") if p.is_file() and p.parent.name == "meta"]
    assert metadata and len(metadata) == len({p.parent.parent for p in metadata})  # one metadata file per step


def test_place_replicates_and_follows_the_rule():
    dp = DataParallel(param_rule=lambda path, leaf: PartitionSpec(BATCH_AXIS) if leaf.ndim == 2 else None)
    tree = {"w": jnp.ones((4, 2)), "b": jnp.ones(2), "count": jnp.asarray(0)}
    specs = {k: dp.sharding_of((), v).spec for k, v in tree.items()}
    assert specs == {"w": PartitionSpec(BATCH_AXIS), "b": PartitionSpec(), "count": PartitionSpec()}
    placed = dp.place(jax.tree.map(np.asarray, tree))
    assert all(isinstance(a, jax.Array) and a.sharding.device_set == set(dp.devices) for a in placed.values())
    assert dp.place(placed)["w"] is placed["w"]  # already placed: kept as it is
    x = dp.global_batch({"x": np.ones((4, 3), np.float32), "y": None})
    assert x["x"].shape == (4, 3) and x["y"] is None
    np.testing.assert_array_equal(dp.process_rows(np.arange(6)), np.arange(6))


def test_shard_by_size_picks_the_first_divisible_axis():
    rule = shard_by_size(4, min_size=16)
    assert rule((), np.zeros((3, 8))) == PartitionSpec(None, BATCH_AXIS)
    assert rule((), np.zeros((8, 8))) == PartitionSpec(BATCH_AXIS, None)
    assert rule((), np.zeros((3, 5))) is None  # too small
    assert rule((), np.zeros((5, 7))) is None  # nothing divides


def test_bad_rules_and_devices_are_named():
    with pytest.raises(ValueError, match="param_rule must be None or a callable"):
        DataParallel(param_rule=3)
    with pytest.raises(ValueError, match="devices must be a non-empty sequence"):
        DataParallel(devices=[])
    dp = DataParallel(param_rule=lambda path, leaf: "batch")
    with pytest.raises(ValueError, match=r"returned 'batch' for \['w'\]"):
        dp.place({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="fit: batch_size must be an integer >= 1"):
        dp.check_batch("fit", 0)


def test_an_unreachable_coordinator_is_an_error_within_the_timeout():
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"coordinator 127.0.0.1:{port} did not accept a connection within 2 s"):
        initialize(f"127.0.0.1:{port}", num_processes=2, process_id=1, timeout_s=2.0)
    assert 1.9 <= time.monotonic() - start <= 6.0
    assert not jax.distributed.is_initialized()


def test_a_busy_coordinator_port_and_bad_addresses_are_named():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            initialize(f"127.0.0.1:{port}", num_processes=2, process_id=0)
    for address in ("127.0.0.1", "127.0.0.1:0", "host:99999", ":80", 8080):
        with pytest.raises(ValueError, match="coordinator_address must be 'host:port'"):
            initialize(address, num_processes=2, process_id=1)
    with pytest.raises(ValueError, match=r"process_id must be an integer in \[0, 1\]"):
        initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="timeout_s must be"):
        initialize("127.0.0.1:1234", num_processes=2, process_id=1, timeout_s=0)
