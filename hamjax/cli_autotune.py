"""``hamjax autotune``: its options, the trained model it starts from, and its outputs.

The model is ``--trained DIR`` (a reference model saved by ``hamjax optimize``
in ``OUT/dense`` or ``OUT/model``), or ``--model`` trained first with the
``baseline`` recipe. :func:`hamjax.autotune.optimize_auto` chooses the recipe;
the command writes ``recipe.toml`` (``hamjax optimize --recipe`` runs it),
``report.json`` and ``report.md`` (the chosen model's stages measured on the
test split, with the baseline), ``decisions.txt`` (the decision log),
``pareto.png`` (every evaluated candidate) and adds the run to the knowledge
base (``--knowledge``: a URL, ``default`` for the user's SQLite file, or
``none``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _weights(text: str) -> dict:
    """``--weights speed=1,memory=1,accuracy=2``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in ("speed", "memory", "accuracy"):
            raise argparse.ArgumentTypeError(f"invalid weight {part!r} (give speed=W,memory=W,accuracy=W)")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid weight {part!r}: {value!r} is not a number") from None
    return out


def add_parser(sub, common: argparse.ArgumentParser, model_arg, data_arg) -> argparse.ArgumentParser:
    """Add the ``autotune`` command to the ``hamjax`` parser's subcommands.

    Args:
      sub: the subparsers action of the ``hamjax`` parser.
      common: the parent parser of options every command takes.
      model_arg: the ``--model`` argument type of ``hamjax optimize``.
      data_arg: the ``--data`` argument type of ``hamjax optimize``.

    Returns:
      The ``autotune`` parser.
    """
    from hamjax import autotune, models

    cmd = sub.add_parser(
        "autotune",
        parents=[common],
        help="choose a compression recipe for a trained model under constraints",
        description="Choose the compression recipe for a trained model: candidates are recipes, proposed by "
        "rules, Monte-Carlo tree search or both, screened with short finetunes, measured in onnxruntime on the "
        "validation split, and checked against the constraints; writes the recipe, a report, the decision log "
        "and a Pareto plot, and adds the run to the knowledge base.",
    )
    cmd.add_argument("--model", type=model_arg, default="mlp", metavar="MODEL", help=f"{', '.join(models.MODELS)}")
    cmd.add_argument("--trained", default=None, help="a saved reference model (hamjax optimize's OUT/dense)")
    cmd.add_argument("--data", type=data_arg, default="digits", metavar="DATA", help="(default: digits)")
    cmd.add_argument("--max-drop", type=float, default=1.0, help="max accuracy drop in points (default: 1.0)")
    cmd.add_argument("--max-latency-ms", type=float, default=None, help="max latency at batch 1 in onnxruntime")
    cmd.add_argument("--max-size-bytes", type=int, default=None, help="max bytes of the stored weights (int storage)")
    cmd.add_argument("--min-size-reduction", type=float, default=None, help="at least this many times smaller")
    cmd.add_argument("--min-speedup", type=float, default=None, help="at least this many times faster")
    cmd.add_argument("--weights", type=_weights, default={}, help="speed=W,memory=W,accuracy=W (default: 1 each)")
    cmd.add_argument("--budget", type=int, default=8, help="full evaluations (default: 8)")
    cmd.add_argument("--seconds", type=float, default=None, help="stop proposing after this many seconds")
    cmd.add_argument("--strategy", choices=autotune.STRATEGIES, default="hybrid", help="(default: hybrid)")
    cmd.add_argument("--selection", choices=("tournament", "roulette", "rank"), default="tournament")
    cmd.add_argument("--knowledge", default="default", help="knowledge base URL, 'default' or 'none'")
    cmd.add_argument("--out", default="hamjax-autotune", help="output directory (default: hamjax-autotune)")
    cmd.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    cmd.add_argument("--quiet", action="store_true", help="print only the result")
    cmd.set_defaults(run=run)
    return cmd


def trained_model(args, dataset, out: Path):
    """``(apply_fn, params, config)``: ``--trained`` loaded, or ``--model`` trained with the baseline recipe."""
    from hamjax import models, pipeline

    if args.trained is not None:
        apply_fn, params, config, _ = models.saved.load(args.trained)
        models.check_model(apply_fn, params, dataset.train.x[:2], dataset.num_classes, where="--trained")
        return apply_fn, params, config
    apply_fn, params, config = models.for_data(args.model, dataset, seed=args.seed, where=f"--model {args.model}")
    result = pipeline.optimize(
        apply_fn, params, dataset, "baseline", seed=args.seed, config=config, progress=not args.quiet
    )
    return result.apply_fn, result.params, config


def write_pareto(result, path: Path) -> Path:
    """Plot every evaluated candidate (accuracy drop against size reduction), the feasible front marked.

    Args:
      result: an :class:`hamjax.autotune.AutoResult`.
      path: the PNG file (written atomically).

    Returns:
      ``path``.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hamjax import checkpoint

    base = result.baseline
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for fidelity, marker in (("cheap", "x"), ("full", "o")):
        rows = [
            e
            for e in result.history
            if e.fidelity == fidelity and not any(v.startswith("failed") for v in e.violations)
        ]
        if not rows:
            continue
        xs = [base.size_bytes / max(e.measured.size_bytes, 1) for e in rows]
        ys = [(base.accuracy - e.measured.accuracy) * 100.0 for e in rows]
        colors = ["tab:green" if not e.violations else "tab:red" for e in rows]
        ax.scatter(xs, ys, c=colors, marker=marker, label=f"{fidelity} evaluations")
    if result.measured is not None:
        m = result.measured
        ax.scatter(
            [base.size_bytes / m.size_bytes],
            [(base.accuracy - m.accuracy) * 100.0],
            s=160,
            facecolors="none",
            edgecolors="black",
            label="chosen",
        )
    ax.set_xscale("log")
    ax.set_xlabel("size reduction (x, dense / candidate)")
    ax.set_ylabel("validation accuracy drop (points)")
    ax.set_title("hamjax autotune: every candidate (green: feasible)")
    ax.legend(loc="best")
    image = io.BytesIO()
    fig.tight_layout()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    checkpoint.atomic_write(path, image.getvalue())
    return path


def run(args) -> int:
    """Run ``hamjax autotune`` with its parsed options.

    Args:
      args: the ``argparse.Namespace`` of the ``autotune`` parser.

    Returns:
      0 when a recipe met the constraints, 1 when none did (the outputs say which constraints no candidate met).
    """
    from hamjax import autotune, checkpoint, data, recipes, report
    from hamjax._checks import check_int, check_positive

    out = Path(checkpoint.check_directory("", "--out", args.out))
    constraints = autotune.Constraints(
        max_accuracy_drop=args.max_drop,
        max_latency_ms=args.max_latency_ms,
        max_size_bytes=args.max_size_bytes,
        min_size_reduction=args.min_size_reduction,
        min_speedup=args.min_speedup,
    )
    weights = autotune.Weights(**args.weights)
    check_int("", "--budget", args.budget, minimum=1)  # before the model trains
    if args.seconds is not None:
        check_positive("", "--seconds", args.seconds)
    knowledge = None if args.knowledge == "none" else args.knowledge
    dataset = (
        data.load(args.data, seed=args.seed) if args.data in data.DATASETS else data.load_npz(args.data, seed=args.seed)
    )
    out.mkdir(parents=True, exist_ok=True)
    apply_fn, params, config = trained_model(args, dataset, out)
    result = autotune.optimize_auto(
        apply_fn,
        params,
        dataset,
        constraints=constraints,
        weights=weights,
        budget=args.budget,
        seconds=args.seconds,
        strategy=args.strategy,
        selection_method=args.selection,
        knowledge=knowledge,
        config=config,
        seed=args.seed,
        folder=out / "candidates",
        echo=None if args.quiet else print,
    )
    checkpoint.atomic_write(out / "decisions.txt", "\n".join(result.log) + "\n")
    plot = write_pareto(result, out / "pareto.png")
    meta = {
        "model": args.trained or args.model,
        "data": dataset.name,
        "signature": result.signature.to_dict(),
        "constraints": constraints.to_dict(),
        "feasible": result.feasible,
        "unmet": list(result.unmet),
        "knowledge": result.knowledge,
        "evaluations": {"full": sum(e.fidelity == "full" for e in result.history), "all": len(result.history)},
    }
    if not result.feasible:
        checkpoint.atomic_write(out / "report.json", json.dumps(meta, indent=2, default=str) + "\n")
        print(f"no recipe met the constraints; never met: {', '.join(result.unmet)}; see {out / 'decisions.txt'}")
        return 1
    saved = recipes.save(result.recipe, out / "recipe.toml")
    stages = [s for s in result.context.stages if s.timed]
    rows = report.measure_stages(stages, dataset.test.x, dataset.test.y)
    report.write_report(out, rows, {**meta, "recipe": result.recipe.to_dict()})
    report.print_table(rows, title=f"hamjax autotune: {meta['model']} on {dataset.name}, chosen recipe")
    print(f"wrote {saved} (hamjax optimize --recipe {saved}), {out / 'report.md'}, {out / 'decisions.txt'}, {plot}")
    return 0
