"""Graph-transform benchmark: every target of the graph-transform work in one run.

Run: ``python bench/graph.py --quick`` (each part's short variant) or
``python bench/graph.py``; ``--parts fold,lowrank`` picks parts. The last
line printed is one JSON object: ``{"bench": "graph", "env", "results",
"targets"}``; every result and target carries the ``part`` it came from.

Each part is its own script, runnable alone (``python bench/graph_fold.py
--quick``), exposing ``run(quick) -> (results, targets)``:

* ``fold``: batch-norm folding of the reference CNN (same predictions, no
  normalisation left in the ONNX graph);
* ``int8``: integer convolutions and matmuls in onnxruntime (CNN and ViT
  int8 against fp32), integer coverage per quantized site;
* ``attention``: attention fused for XLA and for onnxruntime (ViT batch-1
  latency in onnxruntime against JAX jit);
* ``lowrank``: the MLP at half its parameters through truncated SVDs,
  finetuned (accuracy and throughput against dense);
* ``tome``: token merging in the ViT without retraining (throughput and
  accuracy against unmerged);
* ``remat``: the ViT training step's peak memory and time with and without
  rematerialisation;
* ``cache``: a second ``hamjax optimize`` with a warm persistent
  compilation cache against a cold one.

Parts run one after another in one process (the cache part in
subprocesses), so ratios within a part are measured in the same run.
"""

from __future__ import annotations

import sys

from timing import run_parts

PARTS = ("fold", "int8", "attention", "lowrank", "tome", "remat", "cache")


def main(argv=None) -> int:
    return run_parts("graph", PARTS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
