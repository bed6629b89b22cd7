"""``hamjax.optimize``: a whole recipe on the user's own model and data, from Python.

:func:`optimize` is what ``hamjax optimize`` runs: it checks everything it
can before any training (the recipe, the data, the model's output against
the labels, the steps that need a reference architecture), runs the
recipe's steps, measures every stage the same way and, given ``out``,
writes ``report.json``, ``report.md``, the exported files and the models.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

from hamjax import checkpoint, compilation, data, measure, models, prune, recipes, report
from hamjax._checks import check_int
from hamjax.models import saved

__all__ = ["OUTPUTS", "OptimizeResult", "check_out", "optimize"]

_NAMES = {models.MLPConfig: "mlp", models.CNNConfig: "cnn", models.ViTConfig: "vit", models.HAMNetConfig: "hamnet"}
_CONFIGS = (*_NAMES, prune.ShrunkConfig)


# what optimize writes under ``out``: name -> whether it is a folder
OUTPUTS = {"report.json": False, "report.md": False, "dense": True, "model": True, "export": True}


def check_out(out: str | os.PathLike, *, where: str = "optimize", arg: str = "out") -> Path:
    """``out`` as a path, checked before any work as the folder :func:`optimize` writes its results in.

    Refused, with one line naming ``arg``: a regular file, a place this
    process cannot create or write, a report file that is a folder (or a
    model folder that is a file), and a model or export folder that is a
    symbolic link out of ``out``.

    Args:
      out: the output folder; it need not exist yet.
      where: the caller label (``""`` for a CLI option).
      arg: the argument's name.

    Returns:
      The absolute path.

    Raises:
      ValueError: naming the path at fault.

    Examples:
      >>> import pathlib, tempfile
      >>> from hamjax.pipeline import check_out
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> check_out(root / "run") == root / "run"
      True
      >>> (root / "report.json").mkdir()
      >>> check_out(root)
      Traceback (most recent call last):
      ...
      ValueError: optimize: out ...: .../report.json is a folder, where optimize writes its report.json
    """
    path = Path(checkpoint.check_directory(where, arg, out))
    prefix = f"{where}: " if where else ""
    for name, folder in OUTPUTS.items():
        target = path / name
        if target.exists() and target.is_dir() != folder:
            kind = "a folder" if target.is_dir() else "a file"
            raise ValueError(f"{prefix}{arg} {path}: {target} is {kind}, where optimize writes its {name}")
        if folder:
            checkpoint.check_inside(where, f"{arg} {path}: its {name} folder", path, target)
    return path


@dataclasses.dataclass(frozen=True)
class OptimizeResult:
    """What :func:`optimize` returns.

    Attributes:
      stages: one :class:`hamjax.measure.Measurement` per report row, in
        order (the rows of ``hamjax optimize``'s table: params, bytes,
        latency, throughput, test accuracy).
      apply_fn, params: the final optimized float model (after the last step
        that changes the model: a distilled, pruned or shrunk one).
      config: the final model's reference config, or ``None`` for a custom model.
      dense: ``(apply_fn, params)`` of the first trained model, or ``None``
        when the recipe does not train.
      quantized: ``(qapply, qparams)`` of the last ``quantize`` step, or ``None``.
      paths: the files written under ``out`` by name: ``"report.json"``,
        ``"report.md"``, ``"model"``, ``"dense"``, ``"onnx fp32"``,
        ``"onnx int8"`` (those that exist; exported files are listed even
        without ``out``, in a temporary folder).
      recipe: the :class:`hamjax.recipes.Recipe` that ran.
      meta: what ``report.json`` records about the run (recipe, seed, run
        seconds, environment, notes, ``"resumed"``: the stages that
        resumed from checkpoints in ``out`` by name, with the step each
        resumed from, ``"compile"``: XLA compile seconds, compilations and
        persistent-cache hits and misses of the whole run
        (:class:`hamjax.compilation.CompileLog`), with the cache directory,
        and ``"profiles"``: the trace folder of each stage under ``profile``).

    Examples:
      >>> import dataclasses
      >>> from hamjax.pipeline import OptimizeResult
      >>> [f.name for f in dataclasses.fields(OptimizeResult)][:3]
      ['stages', 'apply_fn', 'params']
    """

    stages: list
    apply_fn: Any
    params: Any
    config: Any
    dense: tuple | None
    quantized: tuple | None
    paths: dict[str, Path]
    recipe: recipes.Recipe
    meta: dict

    def stage(self, name: str):
        """The measured row called ``name``.

        Args:
          name: the row's stage name (``"dense"``, ``"onnx int8"``).

        Raises:
          KeyError: naming the rows there are.
        """
        for row in self.stages:
            if row.name == name:
                return row
        raise KeyError(f"no stage {name!r}; stages: {[row.name for row in self.stages]}")


def _recipe(recipe) -> recipes.Recipe:
    if isinstance(recipe, recipes.Recipe):
        return recipe
    if not isinstance(recipe, str | os.PathLike):
        raise TypeError(
            f"optimize: recipe must be a bundled name, a .toml path or a Recipe, got {type(recipe).__name__}"
        )
    try:
        return recipes.load(recipe)
    except recipes.RecipeError as err:
        raise recipes.RecipeError(f"optimize: recipe: {err}") from None


def _dataset(dataset) -> data.Dataset:
    if not isinstance(dataset, data.Dataset):
        raise TypeError(
            f"optimize: data must be a hamjax.data.Dataset (from hamjax.data.from_arrays, load_npz or load), "
            f"got {type(dataset).__name__}"
        )
    return dataset


def _custom_model_steps(recipe: recipes.Recipe, name: str) -> None:
    """Refuse, before any training, a recipe with a step that needs a reference model."""
    needs = recipes.reference_steps(recipe)
    if not needs:
        return
    usable = [n for n in recipes.available() if not recipes.reference_steps(recipes.load(n))]
    raise recipes.RecipeError(
        f"optimize: recipe {name!r} {needs[0]} needs a hamjax reference model ({', '.join(models.MODELS)}); "
        f"this model is custom (config=None): pass config= of a reference model, or a recipe whose steps run on "
        f"any model (bundled: {', '.join(usable)})"
    )


def _channel_group_steps(recipe: recipes.Recipe, apply_fn, params, x) -> None:
    """Refuse, before any training, a student or structured prune of a model that has no prunable channel group."""
    from hamjax.recipes.steps import pruning

    steps = [
        (i, s.kind)
        for i, s in enumerate(recipe.steps)
        if (s.kind == "distill" and s.params.get("student") != "config")
        or (s.kind == "prune" and s.params.get("method") in pruning.STRUCTURED)
    ]
    if not steps:
        return
    groups = prune.channel_groups(apply_fn, params, x)
    if any(g.prunable for g in groups):
        return
    reasons = "; ".join(dict.fromkeys(g.reason for g in groups))
    i, kind = steps[0]
    raise recipes.RecipeError(
        f"optimize: recipe {recipe.name!r} steps[{i}] ({kind}) narrows the model through its channel groups, and "
        f"this model has no prunable one ({reasons}); pick a recipe without it (such as int8-static or nm-2-4)"
    )


def _save_model(path: Path, apply_fn, params, config, meta: dict) -> Path:
    """A reference model as :func:`hamjax.models.saved.save` writes it; a custom one's variables only."""
    del apply_fn
    if type(config) in _NAMES:
        return saved.save(path, config, params, meta=meta)
    path.mkdir(parents=True, exist_ok=True)
    checkpoint.save_tree(path / "variables", params)
    return path


def _write(out: Path, context: recipes.Context, measurements, meta: dict, paths: dict) -> None:
    folder = report.write_report(out, measurements, meta)
    paths["report.json"], paths["report.md"] = folder / "report.json", folder / "report.md"
    facts = {k: meta[k] for k in ("model", "data", "recipe", "seed") if k in meta}
    if "dense" in context.extras:
        dense_fn, dense_params, dense_config = context.extras["dense"]
        dense = Path(context.path("dense", "the dense model"))
        paths["dense"] = _save_model(dense, dense_fn, dense_params, dense_config, {**facts, "stage": "dense"})
    final = meta["final_stage"]
    model = Path(context.path("model", "the final model"))
    paths["model"] = _save_model(model, context.apply_fn, context.params, context.config, {**facts, "stage": final})
    if "onnx int8" in context.extras:
        # The int8 model without pickle: the checked QDQ file onnxruntime runs.
        shutil.copyfile(context.extras["onnx int8"].path, paths["model"] / "model.int8.onnx")
        paths["model int8"] = paths["model"] / "model.int8.onnx"


def _cache_dir() -> str | None:
    import jax

    return jax.config.jax_compilation_cache_dir or None


def _final_stage(context: recipes.Context) -> str:
    """The row of the final float model: the last row whose params are the context's."""
    for stage in reversed(context.stages):
        if stage.params is context.params:
            return stage.name
    return context.stages[-1].name if context.stages else ""


def _profiler(profile: Path, traces: dict[str, str]):
    """A :func:`hamjax.recipes.run` scope: a ``jax.profiler`` trace of each step in ``profile/<stage>``, noted in ``traces``."""
    import jax

    def scope(index: int, step: recipes.Step):
        stage = str(step.params.get("stage", step.kind))
        name = stage if stage not in traces else f"{stage}-{index}"  # two steps with one stage name
        folder = profile / name
        checkpoint.check_inside("optimize", f"profile {profile}: its {name} folder", profile, folder)
        traces[name] = str(folder)
        return jax.profiler.trace(str(folder), create_perfetto_trace=True)

    return scope


def optimize(
    apply_fn,
    params,
    data,
    recipe="default",
    *,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = False,
    config=None,
    model_name: str | None = None,
    profile: str | os.PathLike | None = None,
) -> OptimizeResult:
    """Run a recipe (train, distill, prune, quantize, export...) on any model and dataset, and report every stage.

    Before any training it checks, with one-line errors that name the
    argument: the recipe (a bundled name, a ``.toml`` path or a
    :class:`~hamjax.recipes.Recipe`), the data (a
    :class:`hamjax.data.Dataset`, e.g. from :func:`hamjax.data.from_arrays`),
    that ``apply_fn(params, x)`` gives one logit per class of the data, and,
    for a custom model (``config=None``), that no step needs a reference
    architecture (a distilled student built from the config or made
    shallower; structured pruning, shrink and narrower students work on any
    model through its channel groups).

    Args:
      apply_fn: the model's apply function: from :func:`hamjax.functional`
        (NNX), :func:`hamjax.linen_functional` (Linen) or a plain
        ``jax.numpy`` function ``apply_fn(params, x) -> logits``.
      params: its params (variables for an :class:`hamjax.ApplyFn`).
      data: a :class:`hamjax.data.Dataset` (:func:`hamjax.data.from_arrays`,
        :func:`hamjax.data.load_npz` or :func:`hamjax.data.load`).
      recipe: a bundled recipe's name, a ``.toml`` path or a
        :class:`~hamjax.recipes.Recipe`.
      out: a folder for ``report.json``, ``report.md``, checkpoints,
        ``export/`` (ONNX files), ``dense/`` (the first trained model) and
        ``model/`` (the final float model, and its int8 ONNX file); ``None``
        writes no report and exports to a temporary folder.
      seed: the run's seed (data order, initialisation of students).
      progress: show progress bars.
      config: the reference config of the model
        (:func:`hamjax.models.config_of`), for steps that need the
        architecture; ``None`` for a custom model.
      model_name: how the report names the model (the CLI passes its
        ``--model``); ``None`` takes the reference model's name, or
        ``"custom"``.
      profile: a folder for a ``jax.profiler`` trace of each step, in
        ``profile/<stage>/`` (TensorBoard's profile plugin reads
        ``plugins/profile/*/*.xplane.pb``; ``ui.perfetto.dev`` opens
        ``perfetto_trace.json.gz``); checked before any training. ``None``
        traces nothing.

    Returns:
      An :class:`OptimizeResult`.

    Raises:
      RecipeError: an unknown or invalid recipe, or a step that needs a
        reference model on a custom one (naming the step's index, kind and
        fields).
      TypeError: ``data`` that is not a dataset, ``config`` that is not a
        reference config.
      ValueError: a model whose output does not match the labels, a bad seed,
        an ``out`` or ``profile`` folder that cannot be written.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> import hamjax
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(600, 16)).astype(np.float32)
      >>> y = (x[:, 0] > 0).astype(np.int32)
      >>> dataset = hamjax.data.from_arrays(x, y)
      >>> params = {"w": jnp.zeros((16, 2)), "b": jnp.zeros(2)}
      >>> apply_fn = lambda p, x: x @ p["w"] + p["b"][None]
      >>> result = hamjax.optimize(apply_fn, params, dataset, "int8-static")  # doctest: +SKIP
      >>> [row.name for row in result.stages]  # doctest: +SKIP
      ['dense', 'int8']
      >>> try:
      ...     hamjax.optimize(apply_fn, params, dataset, "default")  # a linear model: nothing to narrow
      ... except hamjax.recipes.RecipeError as err:
      ...     print(str(err).split(" (")[0])
      optimize: recipe 'default' steps[1]
    """
    recipe = _recipe(recipe)
    dataset = _dataset(data)
    seed = check_int("optimize", "seed", seed, minimum=0)
    workdir = None if out is None else check_out(out)
    traces = None if profile is None else Path(checkpoint.check_directory("optimize", "profile", profile))
    if config is not None and not isinstance(config, _CONFIGS):
        raise TypeError(
            f"optimize: config must be a hamjax reference model config (hamjax.models.config_of(module)) or None, "
            f"got {type(config).__name__}"
        )
    models.check_model(apply_fn, params, dataset.train.x[:2], dataset.num_classes, where="optimize: apply_fn")
    if config is None:
        _custom_model_steps(recipe, recipe.name)
        _channel_group_steps(recipe, apply_fn, params, dataset.train.x[:2])
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    context = recipes.Context(
        apply_fn,
        params,
        dataset,
        seed=seed,
        workdir=None if workdir is None else str(workdir),
        progress=progress,
        config=config,
    )
    started = time.perf_counter()
    with compilation.compile_log() as compiled:
        profiles: dict[str, str] = {}
        context = recipes.run(recipe, context, scope=None if traces is None else _profiler(traces, profiles))
        run_seconds = time.perf_counter() - started
        measurements = report.measure_stages(context.stages, dataset.test.x, dataset.test.y)
    if model_name is None:
        base = getattr(config, "base", config)
        model_name = _NAMES.get(type(base), "custom")
    meta = {
        "model": model_name,
        "data": dataset.name,
        "recipe": recipe.name,
        "seed": seed,
        "run_seconds": round(run_seconds, 2),
        "final_stage": _final_stage(context),
        "resumed": dict(context.resumed),
        "compile": {**compiled.to_dict(), "cache_dir": _cache_dir()},
        "profiles": profiles,
        "env": measure.environment(),
        "notes": [f"{s.name}: {s.notes}" for s in context.stages if s.notes],
    }
    paths = {key: context.extras[key].path for key in ("onnx fp32", "onnx fp16", "onnx int8") if key in context.extras}
    if workdir is not None:
        _write(workdir, context, measurements, meta, paths)
    dense = context.extras.get("dense")
    return OptimizeResult(
        stages=measurements,
        apply_fn=context.apply_fn,
        params=context.params,
        config=context.config,
        dense=None if dense is None else dense[:2],
        quantized=context.extras.get("quantized"),
        paths=paths,
        recipe=recipe,
        meta=meta,
    )
