"""Data-parallel benchmark: 8 simulated devices against 1, and 2 processes on localhost against 1.

Run: ``python bench/train_parallel.py [--quick]``. The last line printed is
one JSON object: ``{"bench": "train_parallel", "env", "results", "targets"}``.

The model is an MLP 64-32-10 with dropout on the bundled digits, trained by
``hamjax.fit`` with Adam (batch 64, validation every 5 steps). Every run is a
fresh Python process, because the device count is fixed when JAX starts:

* one process with 8 simulated CPU devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) trains once on
  one device and once with ``TrainConfig(data_parallel=True)`` over all 8;
  the loss curve is every validation's mean training loss and validation
  loss;
* two processes on 127.0.0.1, 2 simulated devices each, join one group with
  :func:`hamjax.parallel.initialize` and train with ``data_parallel=True``,
  each reading its half of every batch; one more process trains alone on
  one device.

A third comparison is for information: the reference CNN with batch norm
on 8 devices against 1, trained with Adam. Its training losses agree within
1e-6, but its validation losses drift apart (1e-3 after 3 epochs, 3e-2
after 10): the convolution biases in front of batch norm have a zero
gradient up to rounding, Adam scales that rounding noise to steps of the
learning rate's size, and the running means that validation uses follow
those biases. With SGD the same comparison agrees within 1e-7. Any change
of summation order (another device count, another XLA version) does the
same.

Targets (float tolerance, not timing): the 8-device loss curve within
1e-5 relative of the 1-device one, and the 2-process final params within
1e-5 of the 1-process ones (max |a - b| / max |b| per leaf). Wall-clock
seconds per run are reported for information only: simulated devices share
the same CPU cores, so they show overheads, not speed-ups.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from timing import finish

TIMEOUT_S = 600
GOAL = 1e-5

_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    spec = json.loads(sys.argv[1])
    if spec["processes"] > 1:
        from hamjax.parallel import initialize
        initialize(f"127.0.0.1:{spec['port']}", spec["processes"], spec["process_id"], timeout_s=120,
                   local_device_count=spec["local_devices"])
    import jax, numpy as np
    from jax.experimental import multihost_utils
    import hamjax
    from hamjax.train import TrainConfig, fit

    ds = hamjax.data.load("digits", seed=0)
    models = {
        "mlp": hamjax.models.build("mlp", input_shape=(8, 8, 1), sizes=(64, 32, 10), dropout_rate=0.2),
        "cnn": hamjax.models.build("cnn", input_shape=(8, 8, 1), channels=(8, 16), dense=(32,)),
    }
    out = {}
    for name, parallel, model in spec["runs"]:
        apply_fn, params = hamjax.functional(models[model])
        cfg = TrainConfig(epochs=spec["epochs"], batch_size=64, learning_rate=3e-3, eval_every=5,
                          data_parallel=parallel)
        started = time.perf_counter()
        result = fit(apply_fn, params, ds, cfg, progress=False)
        leaves = jax.tree.leaves(result.state.params)
        out[name] = {
            "seconds": time.perf_counter() - started,
            "devices": len(leaves[0].sharding.device_set),
            "curve": [[h["train_loss"], h["val_loss"]] for h in result.history],
            "val_accuracy": result.history[-1]["val_accuracy"],
            "params": [np.asarray(multihost_utils.process_allgather(a, tiled=True)).tolist() for a in leaves],
        }
    if jax.process_index() == 0:
        with open(spec["out"], "w") as f:
            json.dump(out, f)
    """
)


def _env(devices: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = Path(__file__).resolve().parent.parent
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p))
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(folder: Path, runs, epochs: int, *, processes: int = 1, devices: int | None = None) -> tuple[dict, float]:
    """The script as ``processes`` processes (a group on 127.0.0.1 when more than one); process 0's results."""
    script, out, port = folder / "fit_script.py", folder / f"out-{time.monotonic_ns()}.json", _free_port()
    script.write_text(_SCRIPT)
    procs = []
    started = time.perf_counter()
    for i in range(processes):
        spec = {"runs": runs, "out": str(out), "epochs": epochs, "processes": processes, "process_id": i}
        spec.update(port=port, local_devices=2)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), json.dumps(spec)],
                env=_env(devices),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a training process failed: {[p.returncode for p in procs]}: {errors[0][-2000:]}")
    return json.loads(out.read_text()), time.perf_counter() - started


def _curve_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _params_rel(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / np.max(np.abs(np.asarray(y))))
        for x, y in zip(a, b, strict=True)
    )


def run(quick: bool) -> tuple[list[dict], list[dict]]:
    """Both comparisons, each run in fresh processes; return (results, targets)."""
    epochs = 3 if quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = [["one", False, "mlp"], ["eight", True, "mlp"], ["cnn_one", False, "cnn"], ["cnn_eight", True, "cnn"]]
        eight, eight_s = _launch(folder, runs, epochs, devices=8)
        group, group_s = _launch(folder, [["group", True, "mlp"]], epochs, processes=2)
        single, single_s = _launch(folder, [["one", False, "mlp"]], epochs)
    curve_rel = _curve_rel(eight["eight"]["curve"], eight["one"]["curve"])
    params_rel = _params_rel(group["group"]["params"], single["one"]["params"])
    results = [
        {
            "comparison": "8 simulated devices vs 1 device, one process",
            "epochs": epochs,
            "validations": len(eight["one"]["curve"]),
            "devices": [eight["one"]["devices"], eight["eight"]["devices"]],
            "loss_curve_max_rel_diff": curve_rel,
            "final_params_max_rel_diff": _params_rel(eight["eight"]["params"], eight["one"]["params"]),
            "val_accuracy": [eight["one"]["val_accuracy"], eight["eight"]["val_accuracy"]],
            "fit_seconds": [round(eight["one"]["seconds"], 2), round(eight["eight"]["seconds"], 2)],
            "process_seconds": round(eight_s, 2),
        },
        {
            "comparison": "2 processes x 2 simulated devices on 127.0.0.1 vs 1 process on 1 device",
            "epochs": epochs,
            "devices": [single["one"]["devices"], group["group"]["devices"]],
            "final_params_max_rel_diff": params_rel,
            "loss_curve_max_rel_diff": _curve_rel(group["group"]["curve"], single["one"]["curve"]),
            "val_accuracy": [single["one"]["val_accuracy"], group["group"]["val_accuracy"]],
            "fit_seconds": [round(single["one"]["seconds"], 2), round(group["group"]["seconds"], 2)],
            "process_seconds": [round(single_s, 2), round(group_s, 2)],
        },
        {
            "comparison": "CNN with batch norm (Adam): 8 simulated devices vs 1 device, one process (information)",
            "epochs": epochs,
            "train_loss_max_rel_diff": _curve_rel(
                np.asarray(eight["cnn_eight"]["curve"])[:, 0], np.asarray(eight["cnn_one"]["curve"])[:, 0]
            ),
            "val_loss_max_rel_diff": _curve_rel(
                np.asarray(eight["cnn_eight"]["curve"])[:, 1], np.asarray(eight["cnn_one"]["curve"])[:, 1]
            ),
            "val_accuracy": [eight["cnn_one"]["val_accuracy"], eight["cnn_eight"]["val_accuracy"]],
        },
    ]
    targets = [
        {
            "name": "8 simulated devices: loss curve vs 1 device, max relative difference",
            "measured": curve_rel,
            "goal": f"<= {GOAL:g}",
            "met": bool(curve_rel <= GOAL),
        },
        {
            "name": "2 processes on localhost: final params vs 1 process, max relative difference",
            "measured": params_rel,
            "goal": f"<= {GOAL:g}",
            "met": bool(params_rel <= GOAL),
        },
    ]
    return results, targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 10")
    args = parser.parse_args(argv)
    results, targets = run(args.quick)
    for row in results:
        print(f"{row['comparison']}: {json.dumps({k: v for k, v in row.items() if k != 'comparison'})}")
    return finish("train_parallel", results, targets)


if __name__ == "__main__":
    sys.exit(main())
