"""Serving benchmark: issue 21's targets for ``hamjax serve`` against a naive FastAPI endpoint, on localhost.

Run: ``python bench/serve.py --quick`` (shorter steps and runs, fewer
requests: each part's docstring says what ``--quick`` shortens) or ``python
bench/serve.py``; ``--parts throughput,errors`` picks parts. The last line
printed is one JSON object: ``{"bench": "serve", "env", "results",
"targets"}`` (``env`` carries the machine, its AVX-512 flags and the package
versions); every result and target carries the ``part`` it came from.

Models: the default reference MLP and CNN trained briefly on the bundled
MNIST subset and exported to ONNX (bench/serve_models.py). Servers run as
subprocesses on 127.0.0.1 (bench/serve_harness.py): ``hamjax serve MODEL
--max-batch 32 --max-wait-ms 2`` and the naive endpoint of
bench/serve_naive.py (one onnxruntime call per request), both with the same
runtime thread count. Load comes from a separate process,
bench/serve_load.py: open-loop Poisson arrivals, latency counted from each
request's scheduled send time.

Each part is its own script, runnable alone (``python bench/serve_soak.py
--quick``), exposing ``run(quick) -> (results, targets)``:

* ``throughput``: the highest rate each server sustains at p99 <= 50 ms
  (hamjax serve >= 3x naive);
* ``errors``: hamjax serve at twice the naive saturation rate, 20,000
  requests: 0% errors, no batch over --max-batch (from /metrics);
* ``startup``: the first request after /readyz within 2x the median;
* ``shutdown``: SIGTERM under load: every request the server accepted answered;
* ``soak``: RSS growth < 10% over a 2-minute soak;
* ``ab``: 1,000 simulated A/A tests checked continuously give <= 5% false
  positives; a 2-point accuracy difference detected with >= 80% power at
  the documented sample size (bench/serve_ab.py, no server).

Parts run one after another in one process; ``errors``, ``shutdown`` and
``soak`` take their rates from ``throughput`` when it ran first.
"""

from __future__ import annotations

import sys

from timing import run_parts

PARTS = ("throughput", "errors", "startup", "shutdown", "soak", "ab")

if __name__ == "__main__":
    sys.exit(run_parts("serve", PARTS, __doc__.splitlines()[0]))
