"""``hamjax serve``: serve ONNX files or saved models over HTTP with dynamic batching, metrics and A/B tests.

``hamjax serve MODEL`` loads MODEL (an ``.onnx`` file or a directory written
by ``hamjax optimize``) as the variant ``default``; ``--variant NAME=PATH``
adds variants, and with two or more the traffic is split between them
(``--split NAME=WEIGHT``) for an A/B test. A model that fails to load stops
the command before it binds a port (exit status 2, with the reason). The
server runs on uvicorn with one worker, logs one JSON line per request, and on
SIGTERM stops taking requests, answers the accepted ones and exits.
"""

from __future__ import annotations

import argparse


def _pair(kind):
    """``NAME=VALUE`` parsed with ``kind`` for the value."""

    def parse(text: str):
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"invalid {text!r}: give NAME=VALUE")
        try:
            return name.strip(), kind(value.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {text!r}: {value!r} is not a {kind.__name__}") from None

    return parse


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``serve`` command to the ``hamjax`` parser's subcommands.

    Args:
      sub: the subparsers action of the ``hamjax`` parser.
      common: the parent parser of options every command takes.

    Returns:
      The ``serve`` parser.
    """
    cmd = sub.add_parser(
        "serve",
        parents=[common],
        help="serve ONNX files or saved models over HTTP (batching, metrics, drift, A/B tests)",
        description="Serve MODEL (an .onnx file or a directory written by hamjax optimize) over HTTP: "
        "POST /v1/predict, GET /healthz, /readyz and /metrics, POST /v1/feedback, GET /v1/ab and /v1/monitor.",
    )
    cmd.add_argument("model", nargs="?", metavar="MODEL", help="the model served as the variant 'default'")
    cmd.add_argument(
        "--variant",
        type=_pair(str),
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another variant (repeat); two or more variants run an A/B test",
    )
    cmd.add_argument(
        "--split",
        type=_pair(float),
        action="append",
        default=[],
        metavar="NAME=WEIGHT",
        help="traffic weight of each variant (default: even)",
    )
    cmd.add_argument("--host", default="127.0.0.1", help="(default: 127.0.0.1; elsewhere needs a token)")
    cmd.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    cmd.add_argument("--max-batch", type=int, default=32, help="most rows per runtime call (default: 32)")
    cmd.add_argument("--max-wait-ms", type=float, default=2.0, help="wait for more rows after the first (default: 2)")
    cmd.add_argument("--max-queue", type=int, default=1024, help="rows waiting per variant before 503 (default: 1024)")
    cmd.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB)")
    cmd.add_argument("--cache-size", type=int, default=0, help="responses kept in an LRU cache (default: 0, none)")
    cmd.add_argument("--threads", type=int, default=None, help="runtime threads in all (default: the CPU quota)")
    token = cmd.add_mutually_exclusive_group()
    token.add_argument("--token-env", metavar="VAR", help="read the bearer token from this environment variable")
    token.add_argument("--token-file", metavar="FILE", help="read the bearer token from this file")
    cmd.add_argument("--state-dir", default=None, help="folder of the A/B record (default: $HAMJAX_DATA_DIR/serve)")
    cmd.add_argument(
        "--feedback-ttl-s", type=float, default=86400.0, help="how long feedback is taken (default: 1 day)"
    )
    cmd.add_argument(
        "--graceful-s", type=float, default=30.0, help="SIGTERM waits this long for requests (default: 30)"
    )
    cmd.add_argument("--plain-logs", action="store_true", help="plain text log lines instead of JSON")
    cmd.set_defaults(run=run)
    return cmd


def config_from_args(args):
    """The :class:`hamjax.serve.config.ServeConfig` the options describe (the token read from its source)."""
    from hamjax.serve import auth
    from hamjax.serve.config import ServeConfig

    models = {} if args.model is None else {"default": args.model}
    for name, path in args.variant:
        if name in models:
            raise ValueError(f"--variant {name}={path}: the variant {name!r} is given twice")
        models[name] = path
    if not models:
        raise ValueError("give MODEL or at least one --variant NAME=PATH")
    split = dict(args.split) or None
    return ServeConfig(
        models=models,
        split=split,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        cache_size=args.cache_size,
        threads=args.threads,
        token=auth.read_token(env=args.token_env, file=args.token_file),
        state_dir=args.state_dir,
        feedback_ttl_s=args.feedback_ttl_s,
        log_json=not args.plain_logs,
        graceful_s=args.graceful_s,
    )


def run(args) -> int:
    """Check the options, load every model, then serve until SIGTERM or Ctrl-C; returns 0."""
    import uvicorn

    from hamjax.serve.app import create_app
    from hamjax.serve.metrics import configure_logging

    config = config_from_args(args)
    log = configure_logging(json_lines=config.log_json)
    app = create_app(config)  # loads the models: a bad one raises here, before the port is bound
    state = app.state.serve

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state.begin_drain()  # new predictions get 503 at once; accepted ones are still answered
            super().handle_exit(sig, frame)

    server = Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            workers=1,
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=config.graceful_s,
        )
    )
    variants = ", ".join(f"{name} ({m.kind} {m.version})" for name, m in state.models.items())
    log.info(f"serving {variants} on http://{config.host}:{config.port}")
    server.run()
    return 0
