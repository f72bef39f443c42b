"""Logs, metrics and traces with AWS Lambda Powertools, configured by the usual variables.

    POWERTOOLS_SERVICE_NAME        service name on every log line and metric (default "search")
    POWERTOOLS_LOG_LEVEL, LOG_LEVEL  log level (default INFO); AWS_LAMBDA_LOG_LEVEL wins when set
    POWERTOOLS_METRICS_NAMESPACE   CloudWatch namespace of the EMF metrics (default "SemanticSearch")
    POWERTOOLS_METRICS_DISABLED    true: metrics are not printed
    POWERTOOLS_TRACE_DISABLED      true: no X-Ray (tracing is also off outside Lambda)

Query text is never logged at INFO (only its length); it appears at DEBUG.  The Tracer is built
only when tracing is on: importing the X-Ray SDK pulls in botocore (~0.3 s of cold start).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "search"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "SemanticSearch"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:=;/+-]{1,128}$")  # what we accept from an incoming header
MS = MetricUnit.Milliseconds


def _tracing_wanted() -> bool:
    from aws_lambda_powertools.tracing.tracer import Tracer

    return not Tracer._is_tracer_disabled()


class _NoTracer:
    """Stands in for the Powertools Tracer when tracing is off, so call sites need no ``if``."""

    disabled = True

    def capture_lambda_handler(self, func=None, **_kwargs):
        return func if func is not None else (lambda f: f)

    def patch(self, *_args, **_kwargs) -> None:
        return None


def _make_tracer():
    if not _tracing_wanted():
        return _NoTracer()
    from aws_lambda_powertools import Tracer

    # auto_patch off: patch_all would also trace every SQLite lookup.  botocore is patched when an
    # s3:// index is used (runtime.py), so downloads show up in the trace.
    return Tracer(service=SERVICE, auto_patch=False)


tracer = _make_tracer()


def trace_stages(started_at: float, timing_ms: Mapping[str, float]) -> None:
    """X-Ray subsegments for the stages one search measured (embed, search, ...), laid end to end from
    ``started_at`` (epoch seconds).  Built after the fact from the measured times, so the CPU work
    itself runs without tracing calls and in whatever thread the executor picked."""
    if tracer.disabled:
        return
    recorder = tracer.provider
    at = started_at
    for name, ms in timing_ms.items():
        if name in ("total", "queue") or not isinstance(ms, (int, float)):
            continue
        subsegment = recorder.begin_subsegment(name)
        if subsegment is None:
            continue
        subsegment.start_time = at
        at += ms / 1000.0
        recorder.end_subsegment(end_time=at)


def record_request(record: Mapping[str, Any]) -> None:
    """App observer under Lambda: per-stage latency and result counts as EMF metrics.

    ``record`` is what the app's middleware collected: status, duration_ms, and for searches
    timing_ms (summed over a batch), results and queries."""
    timing = record.get("timing_ms") or {}
    for stage, name in (
        ("queue", "QueueLatency"),
        ("embed", "EmbedLatency"),
        ("search", "SearchLatency"),
        ("fetch", "FetchLatency"),
    ):
        if isinstance(timing.get(stage), (int, float)):
            metrics.add_metric(name=name, unit=MS, value=float(timing[stage]))
    if isinstance(record.get("results"), int):
        metrics.add_metric(name="Results", unit=MetricUnit.Count, value=record["results"])
    if isinstance(record.get("queries"), int):
        metrics.add_metric(name="Queries", unit=MetricUnit.Count, value=record["queries"])
    if isinstance(record.get("duration_ms"), (int, float)):
        metrics.add_metric(name="RequestLatency", unit=MS, value=float(record["duration_ms"]))


def record_status(status: int) -> None:
    """4xx and 5xx counts (0 or 1 per request, so alarms can use Sum and graphs show the rate).
    Needed because exceptions become 500 responses and never reach Lambda's own Errors metric."""
    metrics.add_metric(name="Http4xx", unit=MetricUnit.Count, value=1 if 400 <= status < 500 else 0)
    metrics.add_metric(name="Http5xx", unit=MetricUnit.Count, value=1 if status >= 500 else 0)
