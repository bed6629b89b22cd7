"""Serving exported models: ``hamjax serve``, dynamic batching, metrics, drift monitoring and A/B tests.

FastAPI, uvicorn and prometheus-client come with the ``serve`` extra
(``pip install "hamjax[serve]"``); ``import hamjax`` never imports them.

* :mod:`~hamjax.serve.config`: :class:`ServeConfig` (what to serve, where, the
  batching and body limits, the token; the CPU quota the runtime threads share);
* :mod:`~hamjax.serve.model`: :class:`ServedModel` (an ONNX file in onnxruntime
  or a saved model under ``jax.jit``: input checks, bucketed batch shapes, warm-up);
* :mod:`~hamjax.serve.batcher`: :class:`Batcher` (one owner task per model:
  dynamic batches never above ``max_batch``, a bounded queue, draining);
* :mod:`~hamjax.serve.cache`, :mod:`~hamjax.serve.auth`, :mod:`~hamjax.serve.body`,
  :mod:`~hamjax.serve.metrics`: the response cache, the bearer token, request
  bodies, Prometheus metrics and JSON logs;
* :mod:`~hamjax.serve.reference`, :mod:`~hamjax.serve.drift`: the training
  inputs' statistics saved beside each exported model and :class:`DriftMonitor`
  (PSI and binned KS per feature);
* :mod:`~hamjax.serve.sequential`, :mod:`~hamjax.serve.abtest`: the always-valid
  sequential test (mSPRT) and :class:`ABTest` (traffic split, feedback, report, SQLite);
* :mod:`~hamjax.serve.app`: :func:`create_app`, the FastAPI app ``hamjax serve`` runs on uvicorn.
"""

from hamjax.serve.abtest import ABTest
from hamjax.serve.app import create_app
from hamjax.serve.batcher import Batcher, Draining, QueueFull
from hamjax.serve.cache import ResponseCache
from hamjax.serve.config import ServeConfig, cpu_quota
from hamjax.serve.drift import DriftMonitor
from hamjax.serve.metrics import Metrics
from hamjax.serve.model import BadInput, ServedModel
from hamjax.serve.reference import InputStats, stats_path
from hamjax.serve.sequential import sample_size, two_proportions

__all__ = [
    "ABTest",
    "BadInput",
    "Batcher",
    "Draining",
    "DriftMonitor",
    "InputStats",
    "Metrics",
    "QueueFull",
    "ResponseCache",
    "ServeConfig",
    "ServedModel",
    "cpu_quota",
    "create_app",
    "sample_size",
    "stats_path",
    "two_proportions",
]
