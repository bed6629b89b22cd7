"""``hamjax search``: its options, the search run, and its outputs (tables, ``search.json``, ``pareto.png``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``search`` command to the ``hamjax`` parser's subcommands.

    Args:
      sub: the subparsers action of the ``hamjax`` parser.
      common: the parent parser of options every command takes.

    Returns:
      The ``search`` parser.
    """
    from hamjax import data

    sea = sub.add_parser(
        "search",
        parents=[common],
        help="architecture search over a masked supernet (random, evolution, bayesian)",
        description="Search architectures (per layer: dense/attention/conv/identity, width, activation; depth), "
        "training each generation's candidates together; resumes from --out after an interruption.",
    )
    sea.add_argument(
        "--method",
        choices=("random", "evolution", "bayesian"),
        default="evolution",
        help="how candidates are proposed (default: evolution)",
    )
    sea.add_argument("--generations", type=int, default=20, help="(default: 20)")
    sea.add_argument("--population", type=int, default=32, help="candidates per generation (default: 32)")
    sea.add_argument("--steps", type=int, default=100, help="training steps per candidate (default: 100)")
    sea.add_argument("--sample-size", type=int, default=8, help="evolution tournament size (default: 8)")
    sea.add_argument("--hidden-size", type=int, default=64, help="supernet token width (default: 64)")
    sea.add_argument("--max-layers", type=int, default=4, help="supernet depth (default: 4)")
    sea.add_argument("--patch-size", type=int, default=None, help="(default: 7 for 28x28 inputs, else 4)")
    sea.add_argument(
        "--objectives",
        type=_objectives,
        default=("accuracy", "params"),
        metavar="LIST",
        help="comma-separated, from accuracy,params,latency; accuracy required; latency times every "
        "architecture (default: accuracy,params)",
    )
    sea.add_argument(
        "--selection",
        choices=("accuracy", "pareto"),
        default="accuracy",
        help="evolution tournament and Bayesian study by accuracy, or by Pareto rank under the objectives "
        "(default: accuracy)",
    )
    sea.add_argument(
        "--sampler", choices=("tpe", "gp"), default="tpe", help="Optuna sampler of --method bayesian (default: tpe)"
    )
    sea.add_argument("--data", choices=data.DATASETS, default="mnist", help="bundled dataset (default: mnist)")
    sea.add_argument("--out", default="hamjax-search", help="output and checkpoint directory")
    sea.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sea.add_argument("--quiet", action="store_true", help="no progress bar")
    sea.set_defaults(run=run)
    return sea


def _objectives(text: str) -> tuple[str, ...]:
    """``--objectives``: a comma-separated list, checked by :func:`hamjax.search.engine.check_objectives`."""
    from hamjax.search import engine

    try:
        return engine.check_objectives(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run(args) -> int:
    """Run ``hamjax search`` with its parsed options: search, print the best and the Pareto front, write the files.

    Args:
      args: the ``argparse.Namespace`` of the ``search`` parser.

    Returns:
      The exit status, 0.
    """
    import json

    from hamjax import checkpoint, data
    from hamjax.search import engine, nas

    config = engine.SearchConfig(
        method=args.method,
        generations=args.generations,
        population_size=args.population,
        steps=args.steps,
        sample_size=min(args.sample_size, args.population),
        seed=args.seed,
        objectives=args.objectives,
        selection=args.selection,
        sampler=args.sampler,
    )
    dataset = data.load(args.data, seed=args.seed)
    h, w, _ = dataset.input_shape
    supernet = nas.SupernetConfig(
        input_shape=tuple(dataset.input_shape),
        num_classes=dataset.num_classes,
        patch_size=args.patch_size or (7 if h % 7 == 0 and w % 7 == 0 else 4),
        hidden_size=args.hidden_size,
        max_layers=args.max_layers,
    )
    out = Path(checkpoint.check_directory("", "--out", args.out))
    out.mkdir(parents=True, exist_ok=True)
    result = engine.run(supernet, dataset, config, workdir=str(out), progress=not args.quiet)
    if result.resumed_from is not None:
        print(f"resumed after generation {result.resumed_from}")
    top = sorted(result.history, key=lambda c: (-c.accuracy, c.params))[:10]
    print_candidates(f"hamjax search: {args.method}, best of {len(result.history)} candidates", top)
    names = {"accuracy": "validation accuracy", "params": "parameters", "latency": "latency"}
    print_candidates(f"Pareto front ({' vs '.join(names[o] for o in config.objectives)})", result.pareto)
    payload = {"supernet": repr(supernet), "config": engine.json_safe(vars(args) | {"run": None}), **result.to_dict()}
    checkpoint.atomic_write(out / "search.json", json.dumps(payload, indent=2))
    _pareto_png(result, out / "pareto.png", line=config.objectives == ("accuracy", "params"))
    print(f"wrote {out / 'search.json'} and {out / 'pareto.png'}")
    return 0


def print_candidates(title: str, candidates) -> None:
    """Print candidates as a table (generation, accuracy, params, latency where measured, architecture).

    Args:
      title: the table's title.
      candidates: :class:`hamjax.search.engine.Candidate` values.
    """
    from rich.console import Console
    from rich.table import Table

    measured = any(c.latency_ms is not None for c in candidates)
    table = Table(title=title)
    for col in ("generation", "validation accuracy", "params", "latency p50 @1 (ms)", "architecture"):
        if measured or not col.startswith("latency"):
            table.add_column(col)
    for c in candidates:
        latency = ["-" if c.latency_ms is None else f"{c.latency_ms:.3f}"] if measured else []
        table.add_row(str(c.generation), f"{c.accuracy:.4f}", f"{c.params:,}", *latency, c.description)
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def _pareto_png(result, path, *, line: bool = True) -> None:
    import io

    import matplotlib

    from hamjax import checkpoint

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    finite = [c for c in result.history if c.accuracy != float("-inf")]
    ax.scatter([c.params for c in finite], [c.accuracy for c in finite], s=10, alpha=0.4, label="candidates")
    # Under more objectives than (accuracy, params) the front is not a curve in this plane.
    style = "o-" if line else "o"
    ax.plot(
        [c.params for c in result.pareto], [c.accuracy for c in result.pareto], style, color="C3", label="Pareto front"
    )
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel="validation accuracy", title="architecture search")
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    checkpoint.atomic_write(path, image.getvalue())
