"""Prometheus metrics of one server (a registry of its own) and its JSON request log lines.

:class:`Metrics` holds every series ``/metrics`` exposes; each app has its
own ``CollectorRegistry``, so two apps in one process (tests) never share
counts. :class:`JsonFormatter` writes one JSON object per log record with the
request's fields (``request_id``, ``variant``, ``status``, ``rows``,
``latency_ms``) and never the input data.
"""

from __future__ import annotations

import datetime
import json
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LOGGER = "hamjax.serve"
FIELDS = ("request_id", "variant", "status", "rows", "latency_ms", "cached", "path", "detail")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WORST_FEATURES = 16


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Histogram bounds for batch sizes: powers of two up to ``max_batch``, and ``max_batch``.

    Examples:
      >>> batch_buckets(12)
      (1.0, 2.0, 4.0, 8.0, 12.0)
    """
    sizes = {float(1 << i) for i in range(max_batch.bit_length()) if (1 << i) <= max_batch}
    return tuple(sorted(sizes | {float(max_batch)}))


class Metrics:
    """The server's series, in a registry of their own.

    Args:
      max_batch: the batcher's bound, for the batch-size histogram's buckets.

    Examples:
      >>> m = Metrics(max_batch=8)
      >>> m.requests.labels(variant="default", code="200").inc()
      >>> b"hamjax_requests_total" in m.render()[0]
      True
    """

    def __init__(self, max_batch: int):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hamjax_requests", "Prediction requests by variant and HTTP status", ("variant", "code"), registry=registry
        )
        self.latency = Histogram(
            "hamjax_request_latency_seconds",
            "Prediction latency from the request read to the answer",
            ("variant",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "hamjax_batch_size",
            "Rows per runtime call (padding excluded)",
            ("variant",),
            buckets=batch_buckets(max_batch),
            registry=registry,
        )
        self.queue_depth = Gauge("hamjax_queue_depth", "Rows waiting for a batch", ("variant",), registry=registry)
        self.cache_hits = Counter("hamjax_cache_hits", "Responses served from the cache", registry=registry)
        self.cache_misses = Counter("hamjax_cache_misses", "Cache lookups that missed", registry=registry)
        self.invalid = Counter(
            "hamjax_invalid_inputs", "Refused prediction inputs by reason", ("reason",), registry=registry
        )
        self.psi_max = Gauge(
            "hamjax_drift_psi_max", "Largest per-feature population stability index", ("variant",), registry=registry
        )
        self.psi = Gauge(
            "hamjax_drift_psi",
            f"Population stability index of the {WORST_FEATURES} most drifted features",
            ("variant", "feature"),
            registry=registry,
        )
        self.ab_p_value = Gauge("hamjax_ab_p_value", "Always-valid p-value of the A/B test", registry=registry)
        self.inflight = Gauge("hamjax_inflight_requests", "Prediction requests being answered", registry=registry)
        self._shown: dict[str, set[str]] = {}

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def set_drift(self, variant: str, psi_max: float, worst: dict[str, float]) -> None:
        """Set the drift gauges of ``variant``: the largest PSI and the (at most 16) worst features' PSIs."""
        self.psi_max.labels(variant=variant).set(psi_max)
        shown = {str(f): float(v) for f, v in list(worst.items())[:WORST_FEATURES]}
        for feature in self._shown.get(variant, set()) - set(shown):
            self.psi.remove(variant, feature)  # a feature that left the worst 16 stops being exported
        for feature, value in shown.items():
            self.psi.labels(variant=variant, feature=feature).set(value)
        self._shown[variant] = set(shown)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, message and the request fields a record carries.

    Examples:
      >>> record = logging.LogRecord("hamjax.serve", logging.INFO, "", 0, "predict", None, None)
      >>> record.request_id, record.status = "abc", 200
      >>> line = json.loads(JsonFormatter().format(record))
      >>> line["request_id"], line["status"], line["message"]
      ('abc', 200, 'predict')
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(
    *, json_lines: bool = True, level: int = logging.INFO, names: tuple[str, ...] = (LOGGER, "uvicorn.error")
) -> logging.Logger:
    """Send the records of the ``names`` loggers to stderr, as JSON lines or plain text; returns the first logger.

    Args:
      json_lines: one JSON object per line (:class:`JsonFormatter`), else ``time message``.
      level: the loggers' level.
      names: the loggers to configure (the server's and uvicorn's own messages).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return logging.getLogger(names[0])
