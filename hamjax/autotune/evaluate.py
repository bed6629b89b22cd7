"""Measuring a candidate recipe: run it on the trained model, export it, and measure what is deployed.

A candidate is a recipe without a ``train`` step (the model autotune is given
is trained). :class:`Evaluator` runs it with :func:`hamjax.recipes.run` in a
folder of its own and measures the model its last ``export`` step wrote (an
ONNX file in onnxruntime), or its last stage when it exports nothing:

* accuracy on the validation split (the test split stays for the final
  report, so choosing a recipe never looks at it);
* latency at batch 1 (the median of timed calls after warm-up);
* bytes of the int storage (:func:`storage_bytes`: the deployed weights in
  the precision the file stores them, int8 as int8 with its scales), the
  ONNX file's bytes besides (graph and shape annotations included: tens of
  kilobytes that no weight cut removes, most of a small model's file), and
  the parameter count.

The baseline is the given model measured the same way (exported to ONNX
fp32), so accuracy drops, speed-ups and size reductions are ratios of one
kind of measurement. A ``"full"`` evaluation runs the recipe as written. A
``"cheap"`` one screens: it caps every finetune at ``cheap_epochs`` epochs
and leaves the export out, so it measures the last stage in JAX (accuracy,
the same int storage) and no latency (JAX's says nothing of
onnxruntime's); only a promising candidate earns a full evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hamjax import measure, recipes
from hamjax._checks import check_choice, check_int
from hamjax.autotune.objective import Measured

FIDELITIES = ("cheap", "full")
"""How thoroughly a candidate is measured: short finetunes, or the recipe as written."""

EPOCH_FIELDS = ("finetune_epochs", "epochs")
"""The step fields a cheap evaluation caps."""


@dataclasses.dataclass
class Outcome:
    """One measured candidate.

    Attributes:
      measured: its :class:`~hamjax.autotune.objective.Measured` numbers.
      context: the recipe's final :class:`hamjax.recipes.Context` (the
        optimized model, its stages, the exported files).
      folder: where its files were written (``None`` for a measurement reused from ``memo``).
      stage: the name of the measured (deployed) stage.
      seconds: wall seconds of the run and the measurement.
    """

    measured: Measured
    context: Any
    folder: Path
    stage: str
    seconds: float


def capped(recipe: recipes.Recipe, epochs: int) -> recipes.Recipe:
    """``recipe`` with every finetune (``finetune_epochs``, ``epochs``) capped at ``epochs``.

    Args:
      recipe: a validated recipe.
      epochs: the cap, >= 0.

    Returns:
      A validated recipe of the same steps.

    Examples:
      >>> from hamjax import recipes
      >>> r = recipes.validate({"name": "r", "steps": [{"kind": "prune", "finetune_epochs": 5}]})
      >>> capped(r, 1).steps[0].params["finetune_epochs"]
      1
    """
    check_int("capped", "epochs", epochs, minimum=0)
    raw = recipe.to_dict()
    for step in raw["steps"]:
        for name in EPOCH_FIELDS:
            if name in step and step[name] is not None:
                step[name] = min(int(step[name]), epochs)
    return recipes.validate(raw)


def without_export(recipe: recipes.Recipe) -> recipes.Recipe:
    """``recipe`` without its ``export`` steps (what a cheap evaluation runs).

    Examples:
      >>> from hamjax import recipes
      >>> r = recipes.validate({"name": "r", "steps": [{"kind": "quantize"}, {"kind": "export"}]})
      >>> [s.kind for s in without_export(r).steps]
      ['quantize']
    """
    raw = recipe.to_dict()
    raw["steps"] = [step for step in raw["steps"] if step["kind"] != "export"]
    return recipes.validate(raw)


def storage_bytes(context, stage) -> int:
    """Bytes of the int storage of what ``stage`` deploys: the weights in the precision its file holds them.

    An int8 export of a quantized model stores the quantize stage's int
    storage (int8 kernels, their scales, the float leaves it keeps); an fp32
    or fp16 export stores every float leaf of the exported params at 4 or
    2 bytes; a stage that exports nothing stores its own params (int8 as
    int8). An int8 export that quantizes by itself (no ``quantize`` step)
    is counted as the float params it started from: an upper bound.

    Args:
      context: a finished :class:`hamjax.recipes.Context`.
      stage: its deployed stage (:func:`deployed_stage`).

    Returns:
      Bytes, > 0 for any model with params.
    """
    precision = stage.name.rsplit(" ", 1)[-1] if stage.name.startswith("onnx ") else None
    if precision is None:
        return int(stage.size_bytes if stage.size_bytes is not None else measure.param_bytes(context.params))
    if precision == "int8" and "quantized" in context.extras:
        return int(measure.param_bytes(context.extras["quantized"][1]))
    width = {"fp16": 2}.get(precision, 4)
    total = 0
    for leaf in jax.tree.leaves(context.params):
        floating = jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)
        total += int(np.size(leaf)) * (width if floating else np.dtype(leaf.dtype).itemsize)
    return total


def deployed_stage(context) -> Any:
    """The stage a recipe deploys: its last exported (``"onnx ..."``) stage, else its last stage.

    Raises:
      ValueError: a recipe that produced no stage.
    """
    if not context.stages:
        raise ValueError("autotune: the recipe produced no model to measure (no stage)")
    exported = [s for s in context.stages if s.name.startswith("onnx ")]
    return (exported or context.stages)[-1]


class Evaluator:
    """Runs candidate recipes on one trained model and measures them like its baseline.

    Args:
      apply_fn, params: the trained model.
      dataset: a :class:`hamjax.data.Dataset` with a validation split.
      config: the reference config when the model is one (steps such as
        ``prune`` with ``method="neurons"`` need it), else ``None``.
      seed: the seed every recipe runs with.
      folder: where candidates write their files (one folder each); ``None``
        makes a temporary folder, removed by :meth:`close`.
      cheap_epochs: the finetune cap of a cheap evaluation, >= 0.
      latency_runs: timed calls of a full evaluation (a cheap one times none), >= 3.
      memo: a dict of earlier measurements of this model on this data, by
        recipe and fidelity, to reuse (runs comparing strategies on one model
        share one); a reused outcome has no model (``context`` is ``None``):
        :meth:`run` with ``reuse=False`` makes it again. ``None``: measure everything.

    Examples:
      >>> import hamjax, jax.numpy as jnp, numpy as np
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(300, 4)).astype(np.float32)
      >>> ds = hamjax.data.from_arrays(x, (x[:, 0] > 0).astype(np.int32))
      >>> ev = Evaluator(lambda p, x: x @ p["w"], {"w": jnp.zeros((4, 2))}, ds)
      >>> ev.cheap_epochs
      1
      >>> ev.close()
    """

    def __init__(
        self,
        apply_fn,
        params,
        dataset,
        *,
        config=None,
        seed: int = 0,
        folder: str | Path | None = None,
        cheap_epochs: int = 1,
        latency_runs: int = 30,
        memo: dict | None = None,
    ):
        self.cheap_epochs = check_int("Evaluator", "cheap_epochs", cheap_epochs, minimum=0)
        self.latency_runs = check_int("Evaluator", "latency_runs", latency_runs, minimum=3)
        self.seed = check_int("Evaluator", "seed", seed, minimum=0)
        if getattr(dataset, "val", None) is None or len(dataset.val.y) == 0:
            raise ValueError("Evaluator: dataset must have a validation split (candidates are chosen on it)")
        self.apply_fn, self.params, self.dataset, self.config = apply_fn, params, dataset, config
        self.owned = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="hamjax-autotune-")) if folder is None else Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.memo = memo
        self.baseline_outcome: Outcome | None = None

    def _measure(self, context, fidelity: str) -> tuple[Measured, str]:
        stage = deployed_stage(context)
        runner = stage.make_runner()
        x, y = self.dataset.val.x, self.dataset.val.y
        accuracy = measure.accuracy(runner, x, y)
        timed = stage.timed and fidelity == "full"  # JAX latency says nothing of onnxruntime's
        latency_ms = measure.latency(runner, x[:1], warmup=5, runs=self.latency_runs).p50_ms if timed else None
        params = stage.param_count if stage.param_count is not None else measure.param_count(context.params)
        file_bytes = stage.size_bytes if stage.name.startswith("onnx ") else None
        measured = Measured(
            accuracy=float(accuracy),
            latency_ms=latency_ms,
            size_bytes=storage_bytes(context, stage),
            params=int(params),
            file_bytes=None if file_bytes is None else int(file_bytes),
        )
        return measured, stage.name

    def run(
        self, recipe: recipes.Recipe, fidelity: str = "full", *, name: str | None = None, reuse: bool = True
    ) -> Outcome:
        """Run ``recipe`` on the model and measure what it deploys.

        Args:
          recipe: a validated candidate recipe.
          fidelity: ``"cheap"`` (finetunes capped at ``cheap_epochs``) or ``"full"``.
          name: the candidate's folder name; ``None`` numbers it.
          reuse: take the measurement from ``memo`` when it has this recipe
            and fidelity (the outcome then has no ``context``).

        Returns:
          An :class:`Outcome`.

        Raises:
          ValueError, RecipeError: from the recipe's steps (a candidate that
            cannot run on this model); the caller records it as failed.
        """
        check_choice("Evaluator.run", "fidelity", fidelity, FIDELITIES)
        if not isinstance(recipe, recipes.Recipe):
            raise TypeError(f"Evaluator.run: recipe must be a hamjax.recipes.Recipe, got {type(recipe).__name__}")
        if any(step.kind == "train" for step in recipe.steps):
            raise ValueError(
                f"Evaluator.run: recipe {recipe.name!r} trains from scratch; candidates start from the trained model"
            )
        memo_key = (json.dumps(recipe.to_dict()["steps"], sort_keys=True), fidelity)
        if reuse and self.memo is not None and memo_key in self.memo:
            measured, stage = self.memo[memo_key]
            return Outcome(Measured(*measured), None, None, stage, 0.0)
        if fidelity == "cheap":
            recipe = without_export(capped(recipe, self.cheap_epochs))
        self.count += 1
        folder = self.folder / (name or f"candidate-{self.count:03d}")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        context = recipes.Context(
            self.apply_fn,
            self.params,
            self.dataset,
            seed=self.seed,
            workdir=str(folder),
            progress=False,
            config=self.config,
        )
        context = recipes.run(recipe, context)
        measured, stage = self._measure(context, fidelity)
        if self.memo is not None:
            self.memo[memo_key] = (tuple(measured), stage)
        return Outcome(measured, context, folder, stage, time.perf_counter() - start)

    def baseline(self) -> Outcome:
        """The given model exported to ONNX fp32 and measured as a full evaluation (computed once)."""
        if self.baseline_outcome is None:
            raw = {"name": "baseline", "steps": [{"kind": "export", "precisions": "fp32", "tensorrt": False}]}
            self.baseline_outcome = self.run(recipes.validate(raw), "full", name="baseline")
        return self.baseline_outcome

    def discard(self, outcome: Outcome) -> None:
        """Remove a candidate's files (a candidate that is not kept)."""
        if outcome.folder is not None:
            shutil.rmtree(outcome.folder, ignore_errors=True)

    def close(self) -> None:
        """Remove the temporary folder this evaluator made (nothing when given a folder)."""
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)
