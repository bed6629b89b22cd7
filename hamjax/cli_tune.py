"""``hamjax tune``: its options, the batched Optuna study, and its outputs (a table, ``best.toml``, plots).

The space comes from ``--space FILE.toml`` (a table of ``name = {low, high,
log}`` or ``{choices = [...]}``), from the ``[steps.search]`` tables of
``--recipe``, or, with neither, :data:`DEFAULT_SPACE` (learning rate, weight
decay, label smoothing). The study lives in ``--storage`` (an SQLite file in
``--out`` by default) under ``--study``; running the same command again
resumes it, and ``optuna-dashboard STORAGE`` opens it.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

DEFAULT_SPACE = {
    "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
}
"""The space searched when neither ``--space`` nor ``--recipe`` gives one."""


def add_parser(sub, common: argparse.ArgumentParser, model_arg, data_arg) -> argparse.ArgumentParser:
    """Add the ``tune`` command to the ``hamjax`` parser's subcommands.

    Args:
      sub: the subparsers action of the ``hamjax`` parser.
      common: the parent parser of options every command takes.
      model_arg: the ``--model`` argument type of ``hamjax optimize``.
      data_arg: the ``--data`` argument type of ``hamjax optimize``.

    Returns:
      The ``tune`` parser.
    """
    from hamjax import models, tune

    tun = sub.add_parser(
        "tune",
        parents=[common],
        help="tune hyperparameters with an Optuna study whose trials train in batches",
        description="Tune training or recipe hyperparameters with Optuna: each batch of trials trains as one "
        "vmapped population, every member reports each epoch to the pruner and a pruned slot is refilled at "
        "once; writes a results table, the best trial as a recipe TOML, and plots. Resumes from --storage.",
    )
    tun.add_argument(
        "--model",
        type=model_arg,
        default="mlp",
        metavar="MODEL",
        help=f"a reference model ({', '.join(models.MODELS)}) or package.module:function (default: mlp)",
    )
    tun.add_argument("--data", type=data_arg, default="digits", metavar="DATA", help="(default: digits)")
    tun.add_argument("--recipe", default=None, help="a recipe whose [steps.search] tables give the space")
    tun.add_argument(
        "--space",
        default=None,
        help="a .toml table of name = {low, high, log} or {choices}, names among "
        f"{', '.join(tune.SEARCHABLE)} (batch_size, schedule, width, depth and activation by bucket, trials of "
        "one structure trained together; for a reference --model, width: its hidden size, depth: its hidden "
        "layers (mlp, cnn dense) or blocks (vit, hamnet), activation: one of "
        f"{', '.join(tune.space.CHOICES['activation'])} (mlp only))",
    )
    tun.add_argument("--trials", type=int, default=64, help="the study's trial budget (default: 64)")
    tun.add_argument("--batch", type=int, default=16, help="trials trained at once (default: 16)")
    tun.add_argument("--epochs", type=int, default=5, help="epochs of a trial that is not pruned (default: 5)")
    tun.add_argument("--sampler", choices=tune.SAMPLERS, default="tpe", help="(default: tpe, constant liar)")
    tun.add_argument("--pruner", choices=tune.PRUNERS, default="none", help="(default: none)")
    tun.add_argument(
        "--objectives",
        default="accuracy",
        help=f"comma-separated, from {','.join(tune.OBJECTIVES)}; accuracy first (default: accuracy)",
    )
    tun.add_argument("--storage", default=None, help="an Optuna storage URL (default: sqlite:///OUT/tune.db)")
    tun.add_argument("--study", default="hamjax-tune", help="the study's name (default: hamjax-tune)")
    tun.add_argument(
        "--execution",
        choices=("vmap", "chunked", "sequential", "auto"),
        default=None,
        help="how a batch's members run; auto times them once (default: the study's record, else vmap)",
    )
    tun.add_argument("--out", default="hamjax-tune", help="output directory (default: hamjax-tune)")
    tun.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    tun.add_argument("--quiet", action="store_true", help="no progress bar")
    tun.set_defaults(run=run)
    return tun


def _space(args):
    from hamjax import tune

    if args.space is not None and args.recipe is not None:
        raise ValueError("tune: give --space or --recipe, not both")
    if args.recipe is not None:
        return tune.Space.from_recipe(args.recipe)
    if args.space is None:
        return tune.Space(DEFAULT_SPACE)
    path = Path(args.space)
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"tune: --space {args.space}: {err}") from None
    return tune.Space(table.get("space", table))


def run(args) -> int:
    """Run ``hamjax tune`` with its parsed options: the study, a table of the best trials, the recipe, the plots.

    Args:
      args: the ``argparse.Namespace`` of the ``tune`` parser.

    Returns:
      The exit status, 0.
    """
    from hamjax import checkpoint, data, models, tune

    out = Path(checkpoint.check_directory("", "--out", args.out))
    space = _space(args)
    dataset = (
        data.load(args.data, seed=args.seed) if args.data in data.DATASETS else data.load_npz(args.data, seed=args.seed)
    )
    build = None
    structure = [n for n in tune.models.STRUCTURAL if n in {*space.names, *space.fixed}]
    if structure:  # one reference model per structure
        apply_fn = params = None
        build = tune.models.reference(args.model, dataset, seed=args.seed, structure=structure)
    else:
        apply_fn, params, _ = models.for_data(args.model, dataset, seed=args.seed, where=f"--model {args.model}")
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'tune.db').resolve()}"
    result = tune.run(
        apply_fn,
        params,
        dataset,
        space,
        trials=args.trials,
        batch=args.batch,
        sampler=args.sampler,
        pruner=None if args.pruner == "none" else args.pruner,
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        storage=storage,
        study_name=args.study,
        epochs=args.epochs,
        seed=args.seed,
        execution=args.execution,
        progress=not args.quiet,
        model=build,
    )
    print_trials(result)
    recipe = result.write_recipe(out / "best.toml")
    plots = write_plots(result, out)
    print(
        f"{result.trials_run} trials in {result.seconds:.1f} s ({result.member_epochs} member-epochs, "
        f"stopped: {result.stopped}); study {args.study!r} in {storage}"
    )
    print(f"wrote {recipe} (hamjax optimize --recipe {recipe}) and {', '.join(str(p) for p in plots)}")
    return 0


def print_trials(result, top: int = 10) -> None:
    """Print the best COMPLETE trials as a table (number, objective values, hyperparameters).

    Args:
      result: a :class:`hamjax.tune.TuneResult`.
      top: how many rows.
    """
    import optuna
    from rich.console import Console
    from rich.table import Table

    done = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: -t.values[0])
    states = [t.state.name for t in result.study.trials]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in dict.fromkeys(states))
    table = Table(title=f"hamjax tune: best of {len(result.study.trials)} trials ({counts})")
    for col in ("trial", *result.objectives, *result.space.names):
        table.add_column(col)
    for t in done[:top]:
        values = [
            f"{v:.4f}" if name == "accuracy" else f"{v:,.4g}"
            for name, v in zip(result.objectives, t.values, strict=True)
        ]
        table.add_row(
            str(t.number),
            *values,
            *(
                f"{t.params.get(n, '-'):.4g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, "-"))
                for n in result.space.names
            ),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def write_plots(result, out: Path) -> list[Path]:
    """Write the optimisation history, the parameter importances and (several objectives) the Pareto front as PNG.

    Args:
      result: a :class:`hamjax.tune.TuneResult`.
      out: the folder.

    Returns:
      The paths written; a plot the study cannot support yet (importances
      need two searched names and a few COMPLETE trials) is left out.
    """
    import io
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from hamjax import checkpoint

    study, written = result.study, []
    target = (lambda t: t.values[0]) if len(result.objectives) > 1 else None
    plots = {"history.png": lambda: ovm.plot_optimization_history(study, target=target, target_name="accuracy")}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(result.space.names) >= 2 and len(complete) >= 4:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        plots["importances.png"] = lambda: ovm.plot_param_importances(
            study, evaluator=evaluator, target=target, target_name="accuracy"
        )
    if len(result.objectives) > 1:
        plots["pareto.png"] = lambda: ovm.plot_pareto_front(study, target_names=list(result.objectives))
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            ax = draw()
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=110)
        plt.close(fig)
        checkpoint.atomic_write(out / name, image.getvalue())
        written.append(out / name)
    return written
