"""Training benchmark: every target of issue 17's training work in one run.

Run: ``python bench/train.py --quick`` (each part's short variant) or
``python bench/train.py``; ``--parts accumulate,regularize`` picks parts. The
last line printed is one JSON object: ``{"bench": "train", "env", "results",
"targets"}``; every result and target carries the ``part`` it came from.

Each part is its own script, runnable alone (``python bench/train_accumulate.py
--quick``), exposing ``run(quick) -> (results, targets)``:

* ``accumulate``: k = 4 micro-batches against one 4x batch, and the cost of
  an accumulation step;
* ``parallel``: 8 simulated devices against 1 (loss curves), 2 processes on
  localhost against 1 (final params);
* ``regularize``: the elastic-net and spectral-penalty step overheads, and
  adversarial training's PGD accuracy on the MLP;
* ``augment``: the augmentation step overhead;
* ``generalize``: label smoothing, mixup and augmentation against plain
  training of the CNN (three seeds);
* ``distill``: function matching, CNN teacher to a quarter-size student
  (three seeds).

Parts run one after another in one process (the parallel part in
subprocesses), so ratios within a part are measured in the same run.
"""

from __future__ import annotations

import sys

from timing import run_parts

PARTS = ("accumulate", "parallel", "regularize", "augment", "generalize", "distill")


def main(argv=None) -> int:
    return run_parts("train", PARTS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
