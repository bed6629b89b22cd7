"""The ASGI app of ``hamjax serve``: routes, readiness, draining, and where each request goes.

:func:`create_app` loads every variant's model (a bad one stops it here,
before any port is bound), and returns a FastAPI app whose lifespan warms
every batch shape in the background (``/readyz`` answers 503 until done) and,
at shutdown, drains the batchers so accepted requests are answered.

Routes: ``POST /v1/predict`` (JSON ``{"inputs": ..., "client": ...,
"variant": ...}`` or an ``application/x-npy`` body), ``POST /v1/feedback``,
``GET /v1/ab``, ``GET /v1/monitor``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``. Every refusal is a 4xx or 503 with ``{"detail": message}``.

With two or more variants the A/B test (:class:`hamjax.serve.abtest.ABTest`)
assigns each request a variant by its client key (``X-Client-Key`` or the
JSON ``client``; at random without one) and records every served request
with its predicted classes (argmax over the output's trailing axes), so
``POST /v1/feedback`` can score it. A request that names its variant
(``X-Variant`` or JSON ``variant``) is served by that variant and recorded
too: name variants only where the choice does not depend on the input, or
the comparison is biased. The record's SQLite file is named by the variants
and their model versions, so new model files start a new test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from typing import Any

import numpy as np
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from hamjax.serve import auth
from hamjax.serve.abtest import ABTest
from hamjax.serve.batcher import Batcher, Draining, QueueFull
from hamjax.serve.body import Refusal, parse_inputs, read_body
from hamjax.serve.cache import ResponseCache, cache_key
from hamjax.serve.config import ServeConfig
from hamjax.serve.drift import DriftMonitor
from hamjax.serve.metrics import LOGGER, Metrics
from hamjax.serve.model import BadInput, ServedModel

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def load_models(config: ServeConfig) -> dict[str, ServedModel]:
    """Every variant's :class:`ServedModel`, its runtime threads a share of the CPU quota.

    Raises:
      ValueError: the first model that fails to load, with the reason.
    """
    threads = config.threads_per_model()
    return {
        name: ServedModel(path, threads=threads, max_batch=config.max_batch, name=name)
        for name, path in config.models.items()
    }


class ServerState:
    """What the routes share: models, batchers, metrics, the cache, the A/B test, the drift monitors, the flags."""

    def __init__(self, config: ServeConfig, models: dict[str, Any]):
        self.config = config
        self.models = models
        self.metrics = Metrics(config.max_batch)
        self.cache = ResponseCache(config.cache_size) if config.cache_size else None
        self.log = logging.getLogger(LOGGER)
        self.batchers = {
            name: Batcher(
                model,
                max_batch=config.max_batch,
                max_wait_ms=config.max_wait_ms,
                max_queue=config.max_queue,
                on_batch=_batch_observer(self.metrics, name),
            )
            for name, model in models.items()
        }
        self.monitors = _monitors(models)
        self.ab = _abtest(config, models) if len(models) > 1 else None
        self.ready = False
        self.draining = False
        self.failure: str | None = None

    def begin_drain(self) -> None:
        """Refuse new predictions from now on (called on SIGTERM, before uvicorn stops listening)."""
        self.draining = True


def _batch_observer(metrics: Metrics, variant: str):
    histogram = metrics.batch_size.labels(variant=variant)

    def observe(rows: int, seconds: float) -> None:
        del seconds
        histogram.observe(rows)

    return observe


def _monitors(models: dict[str, Any]) -> dict[str, Any]:
    """A drift monitor per variant whose model has saved input statistics."""
    with_reference = {name: m for name, m in models.items() if getattr(m, "reference", None) is not None}
    return {name: DriftMonitor(m.reference) for name, m in with_reference.items()}


def _abtest(config: ServeConfig, models: dict[str, Any]):
    """The A/B test of the variants; its SQLite file is named by the variants and versions it compares."""
    split = config.split or {name: 1.0 for name in models}
    tag = hashlib.sha256(
        json.dumps(sorted((n, getattr(m, "version", "")) for n, m in models.items())).encode()
    ).hexdigest()[:12]
    folder = config.state_path
    folder.mkdir(parents=True, exist_ok=True)
    return ABTest(split, path=folder / f"ab-{tag}.sqlite", ttl_s=config.feedback_ttl_s)


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex


def _client_field(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise Refusal(422, f"{name} must be a string, got {type(value).__name__}", reason="json")
    return value


def _predictions(y: np.ndarray) -> list[int] | None:
    """Predicted classes (argmax over the trailing axes) of an output with a class axis, else None."""
    return y.reshape(y.shape[0], -1).argmax(axis=1).tolist() if y.ndim >= 2 else None


class _Routes:
    """The handlers, bound to one :class:`ServerState`."""

    def __init__(self, state: ServerState):
        self.state = state

    def check_token(self, request: Request) -> None:
        if not auth.authorized(request.headers.get("authorization"), self.state.config.token):
            raise Refusal(401, "missing or wrong bearer token", headers=auth.CHALLENGE)

    def choose_variant(self, request: Request, fields: dict) -> str:
        state = self.state
        asked = request.headers.get("x-variant") or _client_field(fields, "variant")
        if asked is not None:
            if asked not in state.models:
                raise Refusal(404, f"unknown variant {asked!r}; known: {', '.join(state.models)}", reason="variant")
            return asked
        if state.ab is not None:
            return state.ab.assign(request.headers.get("x-client-key") or _client_field(fields, "client"))
        return next(iter(state.models))

    async def predict(self, request: Request, background: BackgroundTasks) -> Response:
        state, started = self.state, time.perf_counter()
        rid, variant, rows, cached = _request_id(request), "-", 0, False
        state.metrics.inflight.inc()
        try:
            self.check_token(request)
            if state.draining:
                raise Refusal(503, "the server is shutting down", headers={"Retry-After": "1"})
            if not state.ready:
                raise Refusal(503, state.failure or "the models are warming up", headers={"Retry-After": "1"})
            body = await read_body(request, state.config.max_body_bytes)
            x, fields = parse_inputs(body, request.headers.get("content-type", ""))
            variant = self.choose_variant(request, fields)
            model = state.models[variant]
            try:
                x = model.validate(x)
            except BadInput as err:
                raise Refusal(err.status, str(err), reason=err.reason) from None
            rows = x.shape[0]
            y, cached = await self.run(variant, model, x)
            if y.dtype.kind == "f" and not np.isfinite(y).all():
                raise Refusal(500, "the model produced NaN or infinite outputs")
            latency_ms = (time.perf_counter() - started) * 1000
            if state.ab is not None:  # before the answer, so feedback sent right after it finds the request
                self.record(rid, variant, y, latency_ms)
            if variant in state.monitors:
                background.add_task(self.after, rid, variant, x)
            payload = {"outputs": y.tolist(), "request_id": rid, "variant": variant, "model_version": model.version}
            response = JSONResponse(payload, headers={"X-Request-Id": rid})
        except Refusal as err:
            if err.reason is not None:
                state.metrics.invalid.labels(reason=err.reason).inc()
            response = JSONResponse({"detail": err.detail}, err.status, headers={**err.headers, "X-Request-Id": rid})
        except Exception as err:  # a bug, not the client's fault: answered and logged, the server keeps running
            state.log.exception("predict failed", extra={"request_id": rid, "variant": variant})
            detail = f"internal error: {type(err).__name__}"
            response = JSONResponse({"detail": detail}, 500, headers={"X-Request-Id": rid})
        finally:
            state.metrics.inflight.dec()
        seconds = time.perf_counter() - started
        state.metrics.requests.labels(variant=variant, code=str(response.status_code)).inc()
        if response.status_code == 200:
            state.metrics.latency.labels(variant=variant).observe(seconds)
        state.log.info(
            "predict",
            extra={
                "request_id": rid,
                "variant": variant,
                "status": response.status_code,
                "rows": rows,
                "latency_ms": round(seconds * 1000, 3),
                "cached": cached,
            },
        )
        return response

    async def run(self, variant: str, model: Any, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """The output for ``x``: from the cache, else from the variant's batcher (then cached)."""
        state = self.state
        key = None
        if state.cache is not None:
            key = cache_key(f"{variant}:{model.version}", x)
            hit = state.cache.get(key)
            (state.metrics.cache_hits if hit is not None else state.metrics.cache_misses).inc()
            if hit is not None:
                return hit, True
        try:
            y = await state.batchers[variant].submit(x)
        except QueueFull as err:
            raise Refusal(503, str(err), headers={"Retry-After": "1"}) from None
        except Draining as err:
            raise Refusal(503, str(err), headers={"Retry-After": "1"}) from None
        except Exception as err:
            state.log.exception("the model failed", extra={"variant": variant})
            raise Refusal(500, f"the model failed: {type(err).__name__}: {err}") from None
        if key is not None:
            state.cache.put(key, y)
        return y, False

    def record(self, rid: str, variant: str, y: np.ndarray, latency_ms: float) -> None:
        """Record the answered request in the A/B test (tens of microseconds: one SQLite insert)."""
        state = self.state
        try:
            predictions = _predictions(y)
            if predictions is not None:
                state.ab.record(rid, variant, latency_ms, predictions)
        except Exception:  # the client gets its answer; a failed record is logged, never raised into the server
            state.log.exception("recording the request failed", extra={"request_id": rid, "variant": variant})

    def after(self, rid: str, variant: str, x: np.ndarray) -> None:
        """After the answer is sent (in a worker thread): feed the drift monitor."""
        state = self.state
        try:
            state.monitors[variant].observe(x)
        except Exception:  # the client has its answer; a failed observation is logged, never raised into the server
            state.log.exception("observing the request failed", extra={"request_id": rid, "variant": variant})

    async def feedback(self, request: Request) -> Response:
        self.check_token(request)
        if self.state.ab is None:
            raise Refusal(404, "no A/B test runs: serve two or more variants (--variant NAME=PATH)")
        body = await read_body(request, self.state.config.max_body_bytes)
        try:
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise Refusal(422, f"body is not JSON: {err}") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("request_id"), str):
            raise Refusal(422, 'body must be a JSON object with "request_id" (a string) and "labels"')
        labels = fields.get("labels")
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = [labels]
        if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise Refusal(422, f"labels must be a list of integer classes, got {labels!r}")
        try:
            result = await run_in_threadpool(self.state.ab.feedback, fields["request_id"], labels)
        except KeyError:
            raise Refusal(404, f"unknown or expired request id {fields['request_id']!r}") from None
        except ValueError as err:
            raise Refusal(422, str(err)) from None
        self.state.log.info(
            "feedback", extra={"request_id": result["request_id"], "variant": result["variant"], "status": 200}
        )
        return JSONResponse(result)

    async def ab_report(self, request: Request) -> Response:
        self.check_token(request)
        if self.state.ab is None:
            raise Refusal(404, "no A/B test runs: serve two or more variants (--variant NAME=PATH)")
        report = await run_in_threadpool(self.state.ab.report)
        self.set_p_value(report)
        return JSONResponse(report)

    def set_p_value(self, report: dict) -> None:
        """The A/B gauge from the test's report: its smallest adjusted always-valid p-value."""
        self.state.metrics.ab_p_value.set(report["p_value"])

    async def monitor(self, request: Request) -> Response:
        self.check_token(request)
        out = {}
        for name in self.state.models:
            monitor = self.state.monitors.get(name)
            if monitor is None:
                out[name] = {"reference": None, "detail": "no input statistics saved beside this model"}
                continue
            out[name] = await run_in_threadpool(monitor.report)
            self.set_drift(name, out[name])
        return JSONResponse(out)

    def set_drift(self, name: str, report: dict) -> None:
        """The drift gauges of variant ``name`` from its monitor's report."""
        worst = {w["feature"]: w["psi"] for w in report["worst"]}
        self.state.metrics.set_drift(name, report["psi_max"], worst)

    async def metrics(self, request: Request) -> Response:
        self.check_token(request)
        state = self.state
        for name, batcher in state.batchers.items():
            state.metrics.queue_depth.labels(variant=name).set(batcher.depth)
        for name, monitor in state.monitors.items():
            self.set_drift(name, await run_in_threadpool(monitor.report))
        if state.ab is not None:
            self.set_p_value(await run_in_threadpool(state.ab.report))
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    async def readyz(self, request: Request) -> Response:
        del request
        state = self.state
        if state.draining or not state.ready:
            why = "draining" if state.draining else ("failed" if state.failure else "warming")
            return JSONResponse({"status": why, "detail": state.failure}, 503, headers={"Retry-After": "1"})
        versions = {name: m.version for name, m in state.models.items()}
        return JSONResponse({"status": "ready", "variants": versions})

    async def healthz(self, request: Request) -> Response:
        del request
        return JSONResponse({"status": "ok"})

    def warm_request_path(self, variant: str) -> None:
        """Run once what a request does besides the model, so the first requests after ``/readyz`` do not pay for
        it: the worker threads background tasks use, the metric series, the response encoding, a scratch drift
        monitor (never the real one: warm-up inputs are not traffic)."""
        state, model = self.state, self.state.models[variant]
        y = np.zeros((1, 10), np.float32)  # the model itself was warmed by its batcher
        JSONResponse({"outputs": y.tolist(), "request_id": "warm-up", "variant": variant})
        _predictions(y)
        for code in ("200", "422", "503"):
            state.metrics.requests.labels(variant=variant, code=code)
        state.metrics.latency.labels(variant=variant)
        if variant in state.monitors:
            DriftMonitor(model.reference).observe(np.zeros((1, *model.input_shape), model.input_dtype))

    async def warm(self) -> None:
        """Warm every variant in its own worker thread; then answer ready."""
        state = self.state
        try:
            for name, batcher in state.batchers.items():
                t0 = time.perf_counter()
                sizes = await batcher.warm()
                await run_in_threadpool(self.warm_request_path, name)
                state.log.info(f"warmed {name}: batch sizes {sizes} in {time.perf_counter() - t0:.2f} s")
        except Exception as err:
            state.failure = f"warming the models failed: {type(err).__name__}: {err}"
            state.log.exception(state.failure)
            return
        state.ready = True
        state.log.info("ready")


def create_app(config: ServeConfig, *, models: dict[str, Any] | None = None) -> FastAPI:
    """The ``hamjax serve`` app for ``config``.

    Args:
      config: the options.
      models: already loaded models by variant (tests pass fakes with
        ``predict``, ``warm``, ``validate``, ``version``); None loads ``config.models``.

    Returns:
      A FastAPI app; ``app.state.serve`` is its :class:`ServerState`.

    Raises:
      ValueError: a model that fails to load (before anything binds a port).
    """
    state = ServerState(config, models if models is not None else load_models(config))
    routes = _Routes(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        del app
        warming = asyncio.get_running_loop().create_task(routes.warm())
        yield
        state.begin_drain()
        await warming
        await asyncio.gather(*(b.drain() for b in state.batchers.values()))
        if state.ab is not None:
            state.ab.close()
        state.log.info("drained")

    app = FastAPI(title="hamjax serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(Refusal)
    async def refused(request: Request, err: Refusal) -> Response:
        state.log.info("refused", extra={"path": request.url.path, "status": err.status, "detail": err.detail})
        return JSONResponse({"detail": err.detail}, err.status, headers=err.headers)

    app.add_api_route("/v1/predict", routes.predict, methods=["POST"])
    app.add_api_route("/v1/feedback", routes.feedback, methods=["POST"])
    app.add_api_route("/v1/ab", routes.ab_report, methods=["GET"])
    app.add_api_route("/v1/monitor", routes.monitor, methods=["GET"])
    app.add_api_route("/metrics", routes.metrics, methods=["GET"])
    app.add_api_route("/readyz", routes.readyz, methods=["GET"])
    app.add_api_route("/healthz", routes.healthz, methods=["GET"])
    return app
