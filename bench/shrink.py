"""Structured pruning of any model (issue 18): every benchmark target in one run.

Run: ``python bench/shrink.py --quick`` (each part's short variant) or
``python bench/shrink.py``; ``--parts cnn,transformer`` picks parts. The
last line printed is one JSON object: ``{"bench": "shrink", "env",
"results", "targets"}``; every result and target carries the ``part`` it
came from, and one result (``part: "env"``) holds the CPU's AVX-512 flags.

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

import argparse
import importlib
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import finish

PARTS = ("groups", "vit", "cnn", "transformer")


def cpu_flags() -> list[str]:
    """The AVX-512 flags the CPU reports (``lscpu``'s flags, read from ``/proc/cpuinfo``); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"\bavx512[a-z_0-9]*", text)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every part's short variant")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list from {','.join(PARTS)}")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown or not chosen:
        parser.error(f"--parts: expected a comma list from {','.join(PARTS)}, got {args.parts!r}")
    results, targets = [{"part": "env", "cpu_flags_avx512": cpu_flags()}], []
    for part in chosen:
        module = importlib.import_module(f"shrink_{part}")
        started = time.perf_counter()
        part_results, part_targets = module.run(args.quick)
        seconds = round(time.perf_counter() - started, 1)
        results.extend({"part": part, **row} for row in part_results)
        results.append({"part": part, "seconds": seconds})
        targets.extend({"part": part, **target} for target in part_targets)
        print(f"shrink/{part}: {seconds} s, targets met {sum(t['met'] for t in part_targets)}/{len(part_targets)}")
        sys.stdout.flush()
    return finish("shrink", results, targets)


if __name__ == "__main__":
    raise SystemExit(main())
