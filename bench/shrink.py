"""Structured pruning of any model (issue 18): every benchmark target in one run.

Run: ``python bench/shrink.py --quick`` (each part's short variant) or
``python bench/shrink.py``; ``--parts cnn,transformer`` picks parts. The
last line printed is one JSON object: ``{"bench": "shrink", "env",
"results", "targets"}``; every result and target carries the ``part`` it
came from, and ``env`` holds the CPU's AVX-512 flags.

Each part is its own script, runnable alone (``python bench/shrink_cnn.py
--quick``), exposing ``run(quick) -> (results, targets)``:

* ``groups``: time of group discovery and masks on the MLP, CNN and ViT
  reference models;
* ``vit``: discovery plus shrink of the reference ViT, end to end (< 5 s);
* ``cnn``: a Linen ResNet written in the bench, half its channels removed
  by group L2 and finetuned: throughput under jit and in onnxruntime
  (>= 1.6x each) and test accuracy (within 1 point of the dense model);
* ``transformer``: a plain jax.numpy transformer with a fused qkv kernel,
  half its heads and MLP width removed: throughput under jit (>= 1.5x).

Parts run one after another in one process, so ratios within a part are
measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import run_parts

PARTS = ("groups", "vit", "cnn", "transformer")


def main(argv=None) -> int:
    return run_parts("shrink", PARTS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
