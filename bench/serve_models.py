"""The two models bench/serve.py serves: the default reference MLP and CNN, trained briefly on the bundled MNIST subset.

Each is built with :func:`hamjax.models.build`'s defaults for 28x28x1 images
(the MLP 784-512-512-10; the CNN's default conv stages and dense layers),
trained for two epochs with :func:`hamjax.train.fit` and written as an fp32
ONNX file with a symbolic batch by :func:`hamjax.export.onnx`, beside the
input statistics of its training images (:mod:`hamjax.serve.reference`),
in one temporary folder per process.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import numpy as np

import hamjax
from hamjax import data as data_lib
from hamjax import models
from hamjax.train import TrainConfig, fit

MODELS = ("mlp", "cnn")
DATA = {"name": "mnist", "seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}


@functools.cache
def folder() -> Path:
    """This process's temporary folder for the exported models (removed at exit)."""
    holder = tempfile.TemporaryDirectory(prefix="hamjax-bench-serve-")
    folder.holder = holder  # keeps the folder alive until the process ends
    return Path(holder.name)


@functools.cache
def dataset():
    """The MNIST subset's split (float32 images, (N, 28, 28, 1))."""
    return data_lib.load(**DATA)


def inputs(n: int, seed: int = 0) -> np.ndarray:
    """``n`` test images (float32, (n, 28, 28, 1)), drawn with replacement."""
    x = dataset().test.x
    return np.asarray(x[np.random.default_rng(seed).integers(0, len(x), n)], np.float32)


@functools.cache
def exported(name: str) -> dict:
    """``{"path", "accuracy", "train_s", "export_s"}`` of model ``name`` (once per process)."""
    ds = dataset()
    module = models.build(name, seed=0, input_shape=ds.input_shape, num_classes=ds.num_classes)
    apply_fn, params = hamjax.functional(module)
    started = time.perf_counter()
    result = fit(
        apply_fn, params, ds, TrainConfig(epochs=2, batch_size=128, learning_rate=1e-3, seed=0), progress=False
    )
    train_s = time.perf_counter() - started
    accuracy = hamjax.train.evaluate(apply_fn, result.params, ds.test)["accuracy"]
    path = folder() / f"{name}.onnx"
    started = time.perf_counter()
    hamjax.export.onnx(apply_fn, result.params, np.asarray(ds.test.x[:8]), path)
    export_s = time.perf_counter() - started
    try:
        from hamjax.serve import reference
    except ImportError:
        reference = None
    if reference is not None and hasattr(reference, "InputStats"):
        reference.InputStats.from_data(np.asarray(ds.train.x)).save(reference.stats_path(path))
    return {
        "path": str(path),
        "accuracy": round(float(accuracy), 4),
        "train_s": round(train_s, 1),
        "export_s": round(export_s, 1),
    }
