"""The ``hamjax`` command.

``hamjax optimize`` trains a reference model on bundled data through a
recipe and reports every stage; ``hamjax recipes`` lists and checks recipes.
"""

from __future__ import annotations

import argparse
import sys
import time


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not a usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _optimize(args) -> int:
    from hamjax import data, measure, models, recipes, report
    from hamjax._base import functional

    recipe = recipes.load(args.recipe)
    dataset = data.load(args.data, seed=args.seed)
    module = models.build(args.model, seed=args.seed, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
    apply_fn, params = functional(module)
    started = time.perf_counter()
    context = recipes.Context(
        apply_fn,
        params,
        dataset,
        seed=args.seed,
        workdir=args.out,
        progress=not args.quiet,
        config=models.config_of(module),
    )
    context = recipes.run(recipe, context)
    train_seconds = time.perf_counter() - started
    measurements = report.measure_stages(context.stages, dataset.test.x, dataset.test.y)
    meta = {
        "model": args.model,
        "data": args.data,
        "recipe": recipe.name,
        "seed": args.seed,
        "run_seconds": round(train_seconds, 2),
        "env": measure.environment(),
        "notes": [f"{s.name}: {s.notes}" for s in context.stages if s.notes],
    }
    report.print_table(measurements, title=f"hamjax optimize: {args.model} on {args.data}, recipe {recipe.name}")
    out = report.write_report(args.out, measurements, meta)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0


def _recipes(args) -> int:
    from hamjax import recipes

    if args.check:
        for path in args.check:
            r = recipes.load(path)
            print(f"{path}: ok ({r.name}, {len(r.steps)} steps)")
        return 0
    for name in recipes.available():
        r = recipes.load(name)
        kinds = " -> ".join(s.kind for s in r.steps)
        print(f"{name:24s} {kinds:30s} {r.description}")
    if args.fields:
        for kind, spec in recipes.step_kinds().items():
            print(f"\n[{kind}] {spec.doc}")
            for fname, f in spec.fields.items():
                print(f"  {fname:16s} {f.type.__name__:6s} default={f.default!r:10} {f.doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hamjax`` command."""
    from hamjax import data, models

    parser = _Parser(prog="hamjax", description="Make neural networks smaller and faster in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    opt = sub.add_parser(
        "optimize",
        help="train a reference model through a recipe and report every stage",
        description="Train a reference model on bundled data through a recipe; print and write a report "
        "with one row per stage (params, size, latency, throughput, accuracy).",
    )
    opt.add_argument("--model", choices=models.MODELS, default="mlp", help="reference model (default: mlp)")
    opt.add_argument("--data", choices=data.DATASETS, default="mnist", help="bundled dataset (default: mnist)")
    opt.add_argument("--recipe", default="default", help="bundled recipe name or .toml path (default: default)")
    opt.add_argument("--out", default="hamjax-out", help="output directory (default: hamjax-out)")
    opt.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    opt.add_argument("--quiet", action="store_true", help="no progress bars")
    opt.set_defaults(run=_optimize)

    rec = sub.add_parser("recipes", help="list bundled recipes or check recipe files")
    rec.add_argument("--check", nargs="+", metavar="PATH", help="validate these recipe files")
    rec.add_argument("--fields", action="store_true", help="also list every step kind's fields")
    rec.set_defaults(run=_recipes)
    return parser


def main(argv=None) -> int:
    """Run the ``hamjax`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"hamjax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hamjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
