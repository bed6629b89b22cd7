"""The ``hamjax`` command.

``hamjax optimize`` trains a reference model or the user's own
(``--model package.module:function``) on bundled data or the user's arrays
(``--data file.npz``) through a recipe with :func:`hamjax.optimize`,
reports every stage and saves the dense and the optimized models; ``hamjax export``
writes a reference model or a saved one as a checked ONNX file;
``hamjax search`` runs an architecture search; ``hamjax recipes`` lists
and checks recipes.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not a usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _model_arg(text: str) -> str:
    """``--model``: a reference model's name, or ``package.module:function`` (checked when imported)."""
    from hamjax import models

    if text in models.MODELS or ":" in text:
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose a reference model from {', '.join(models.MODELS)}, "
        "or give package.module:function)"
    )


def _data_arg(text: str) -> str:
    """``--data``: a bundled dataset's name, or an ``.npz`` file (read when the run starts)."""
    from hamjax import data

    if text in data.DATASETS or text.endswith(".npz"):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose a bundled dataset from {', '.join(data.DATASETS)}, or give a .npz file)"
    )


def _writable_file(option: str, text: str) -> Path:
    """``--out FILE``: refuse, before any work, a folder given for a file name, or a place not writable."""
    from hamjax import checkpoint

    return Path(checkpoint.check_file("", option, text))


def _compile_cache(args) -> None:
    """Point JAX's persistent compilation cache where the options say, before anything compiles."""
    import os

    from hamjax import compilation

    if args.no_compile_cache:
        return
    if args.compile_cache is not None:
        arg = "--compile-cache"
    elif compilation.ENV in os.environ:
        arg = f"${compilation.ENV}"
    else:
        arg = "the compilation cache folder (choose one with --compile-cache DIR, or --no-compile-cache)"
    compilation.use_cache(compilation.cache_dir(args.compile_cache), where="", arg=arg)


def _optimize(args) -> int:
    from hamjax import checkpoint, data, models, pipeline, recipes, report

    pipeline.check_out(args.out, where="", arg="--out")
    if args.profile is not None:
        checkpoint.check_directory("", "--profile", args.profile)
    _compile_cache(args)
    recipe = recipes.load(args.recipe)
    dataset = (
        data.load(args.data, seed=args.seed) if args.data in data.DATASETS else data.load_npz(args.data, seed=args.seed)
    )
    # An imported model is checked against the data's own inputs and classes, so the message names the option at fault.
    apply_fn, params, config = models.for_data(args.model, dataset, seed=args.seed, where=f"--model {args.model}")
    result = pipeline.optimize(
        apply_fn,
        params,
        dataset,
        recipe,
        out=args.out,
        seed=args.seed,
        progress=not args.quiet,
        config=config,
        model_name=args.model,
        profile=args.profile,
    )
    for stage, step in result.meta.get("resumed", {}).items():
        print(f"resumed {stage} from step {step} (checkpoints in {args.out})")
    report.print_table(result.stages, title=f"hamjax optimize: {args.model} on {args.data}, recipe {recipe.name}")
    paths, compiled = result.paths, result.meta["compile"]
    cached = (
        f", {compiled['cache_hits']} read from the cache in {compiled['cache_dir']}" if compiled["cache_dir"] else ""
    )
    print(f"compiled {compiled['compiles']} programs in {compiled['seconds']:.1f} s{cached}")
    for stage, folder in result.meta["profiles"].items():
        print(f"wrote the {stage} profile to {folder} (TensorBoard, or perfetto_trace.json.gz in ui.perfetto.dev)")
    print(f"wrote {paths['report.json']} and {paths['report.md']}")
    if "dense" in paths:
        print(f"saved the dense model to {paths['dense']}")
    final = result.meta["final_stage"]
    if (paths["model"] / "model.json").exists():
        print(f"saved the {final} model to {paths['model']} (hamjax export {paths['model']} --precision int8)")
    else:
        print(f"saved the {final} model's variables to {paths['model']} (hamjax.checkpoint.load_tree)")
    for key in ("onnx fp32", "onnx fp16", "onnx int8"):
        if key in paths:
            print(f"wrote {paths[key]}")
    return 0


def _export(args) -> int:
    from pathlib import Path

    from hamjax import data, export, models
    from hamjax._base import functional
    from hamjax.export.input_stats import InputStats, stats_path
    from hamjax.models import saved
    from hamjax.recipes.steps.quantization import calibration_batches

    _writable_file("--out", args.out)
    source = Path(args.model)
    if source.is_dir():
        apply_fn, params, _, meta = saved.load(source)
        dataset = data.load(meta.get("data", args.data), seed=args.seed)
        what = f"the model saved in {source}"
    elif args.model in models.MODELS:
        dataset = data.load(args.data, seed=args.seed)
        module = models.build(
            args.model, seed=args.seed, input_shape=dataset.input_shape, num_classes=dataset.num_classes
        )
        apply_fn, params = functional(module)
        what = f"an untrained {args.model} (seed {args.seed}; train one with hamjax optimize)"
    else:
        raise ValueError(
            f"{args.model!r} is neither a reference model ({', '.join(models.MODELS)}) "
            "nor a directory written by hamjax optimize (one with model.json)"
        )
    calibration = calibration_batches(dataset, 8, 128, args.seed) if args.precision == "int8" else None
    print(f"exporting {what} as {args.precision} ONNX...")
    result = export.onnx(
        apply_fn,
        params,
        dataset.val.x[:64],
        args.out,
        precision=args.precision,
        dynamic_batch=not args.static_batch,
        calibration=calibration,
        check_data=dataset.val.x[64:512],
    )
    for c in result.checks:
        print(
            f"  checked on {c.rows} {c.inputs} rows: max relative error {c.max_relative_error:.2e}, "
            f"argmax agreement {c.argmax_agreement:.4f}"
        )
    if result.integer_ops:
        print(f"  onnxruntime runs integer kernels: {', '.join(result.integer_ops)}")
    for site in result.sites:
        print(f"  site {site.site}: {site.kernel} ({'integer' if site.integer else 'float'})")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB) in {result.seconds:.1f} s")
    stats = InputStats.from_data(dataset.train.x).save(stats_path(result.path))
    print(f"wrote {stats} (training-split input statistics, for hamjax serve's drift monitor)")
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
    from hamjax import cli_autotune, cli_search, cli_serve, cli_tune, data, models

    parser = _Parser(prog="hamjax", description="Make neural networks smaller and faster in JAX.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of anticipated errors too")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command; SUPPRESS keeps one given before
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    opt = sub.add_parser(
        "optimize",
        parents=[common],
        help="train a model through a recipe and report every stage",
        description="Train a reference model or your own on bundled data or your own arrays through a recipe; "
        "print and write a report with one row per stage (params, size, latency, throughput, accuracy).",
    )
    opt.add_argument(
        "--model",
        type=_model_arg,
        default="mlp",
        metavar="MODEL",
        help=f"a reference model ({', '.join(models.MODELS)}) or package.module:function returning "
        "(apply_fn, params, example_input) (default: mlp)",
    )
    opt.add_argument(
        "--data",
        type=_data_arg,
        default="mnist",
        metavar="DATA",
        help=f"a bundled dataset ({', '.join(data.DATASETS)}) or a .npz file with x_train, y_train and optional "
        "x_val, y_val, x_test, y_test (default: mnist)",
    )
    opt.add_argument("--recipe", default="default", help="bundled recipe name or .toml path (default: default)")
    opt.add_argument("--out", default="hamjax-out", help="output directory (default: hamjax-out)")
    opt.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    opt.add_argument("--quiet", action="store_true", help="no progress bars")
    opt.add_argument(
        "--profile",
        metavar="DIR",
        help="write a jax.profiler trace of each stage to DIR/<stage>/ (TensorBoard, Perfetto)",
    )
    cache = opt.add_mutually_exclusive_group()
    cache.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="persistent XLA compilation cache, so a second run compiles less (default: $HAMJAX_COMPILE_CACHE, "
        "else $XDG_CACHE_HOME/hamjax/jax or ~/.cache/hamjax/jax)",
    )
    cache.add_argument("--no-compile-cache", action="store_true", help="compile everything, keep nothing")
    opt.set_defaults(run=_optimize)

    exp = sub.add_parser(
        "export",
        parents=[common],
        help="write a reference model or a saved one as a checked ONNX file",
        description="Export MODEL (a reference model name, untrained, or a directory hamjax optimize wrote, "
        "such as hamjax-out/model) as an ONNX file checked against JAX in onnxruntime.",
    )
    exp.add_argument("model", metavar="MODEL_OR_CHECKPOINT", help=f"one of {', '.join(models.MODELS)}, or a directory")
    exp.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="(default: fp32)")
    exp.add_argument("--out", required=True, help="the .onnx file to write")
    exp.add_argument("--data", choices=data.DATASETS, default="mnist", help="data for checks and int8 calibration")
    exp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    exp.add_argument("--static-batch", action="store_true", help="fix the batch to 64 instead of a symbolic one")
    exp.set_defaults(run=_export)

    cli_search.add_parser(sub, common)
    cli_tune.add_parser(sub, common, _model_arg, _data_arg)
    cli_autotune.add_parser(sub, common, _model_arg, _data_arg)
    cli_serve.add_parser(sub, common)

    rec = sub.add_parser("recipes", parents=[common], help="list bundled recipes or check recipe files")
    rec.add_argument("--check", nargs="+", metavar="PATH", help="validate these recipe files")
    rec.add_argument("--fields", action="store_true", help="also list every step kind's fields")
    rec.set_defaults(run=_recipes)
    return parser


def _anticipated() -> tuple[type[BaseException], ...]:
    """Errors a user can act on, printed as one line: ValueError (hamjax's own RecipeError, ExportError,
    ModelImportError and checks; JSON, orbax and tensorstore errors of a corrupt checkpoint or model.json; a recipe
    that is not UTF-8), OSError (paths, permissions, a full disk), and TensorRTUnavailable once its module loaded."""
    trt = sys.modules.get("hamjax.export.trt_engine")
    return (ValueError, OSError) + ((trt.TensorRTUnavailable,) if trt is not None else ())


def _error_line(err: BaseException) -> str:
    """One line: an OSError's file and reason, a third-party error's class name, several lines joined."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        names = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
        text = f"{names}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
        module = type(err).__module__
        if module != "builtins" and not module.startswith("hamjax"):
            text = f"{type(err).__name__}: {text}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv=None) -> int:
    """Run the ``hamjax`` command; return its exit status.

    An anticipated error (a bad input, path, recipe, model or checkpoint) prints one line
    ``hamjax <command>: error: ...`` and returns 2; ``--debug`` prints its traceback first. Any other
    exception is a bug and propagates with its traceback.

    Args:
      argv: the arguments after ``hamjax``; ``None`` reads ``sys.argv``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"hamjax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, _anticipated()):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"hamjax {args.command}: error: {_error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
