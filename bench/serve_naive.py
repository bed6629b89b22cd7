"""The naive endpoint bench/serve.py compares ``hamjax serve`` with: ``python bench/serve_naive.py MODEL --port P``.

The usual first deployment: a FastAPI app whose synchronous route (run in
Starlette's thread pool, one thread per request in flight) parses the JSON
body and makes one onnxruntime call per request on one shared
:class:`hamjax.export.runtime.Session` -- the same runtime class and thread
count as ``hamjax serve``, without batching, queue bounds or warm-up. Served
by uvicorn on 127.0.0.1, one worker, like ``hamjax serve``. Same request and
answer format: ``POST /v1/predict`` ``{"inputs": [...]}`` -> ``{"outputs":
[...]}``; ``GET /healthz`` and ``GET /readyz`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def create_app(model: str, threads: int):
    """The FastAPI app: one runtime call per request."""
    from fastapi import Body, FastAPI

    from hamjax.export.runtime import Session

    session = Session(model, threads=threads, name="naive")
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(body: dict = Body(...)):  # noqa: B008 (FastAPI's declaration idiom)
        x = np.asarray(body["inputs"], session.input_dtype)
        return {"outputs": session(x).tolist()}

    return app


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(args.model, args.threads), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
