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

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

PARTS = ("fold", "int8", "attention", "lowrank", "tome", "remat", "cache")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every part's short variant")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list from {','.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: expected a comma list from {','.join(PARTS)}, got {args.parts!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hamjax import measure

    results, targets = [], []
    for part in parts:
        module = importlib.import_module(f"graph_{part}")
        started = time.perf_counter()
        part_results, part_targets = module.run(args.quick)
        seconds = round(time.perf_counter() - started, 1)
        results.extend({"part": part, **row} for row in part_results)
        results.append({"part": part, "seconds": seconds})
        targets.extend({"part": part, **target} for target in part_targets)
        print(f"graph/{part}: {seconds} s, targets met {sum(t['met'] for t in part_targets)}/{len(part_targets)}")
        sys.stdout.flush()
    print(json.dumps({"bench": "graph", "env": measure.environment(), "results": results, "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
