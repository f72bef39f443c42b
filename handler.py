"""AWS Lambda entry point: ``handler.handler``.

One execution environment = one process = one ``Runtime``: the model and index are loaded once
(at init when running in Lambda, else on first use) and reused by every invocation.  A load that
fails at init is an init error; one that fails later (a lazy load) answers 503 and is retried.

    {"warmup": true}, EventBridge "Scheduled Event"   -> warm(): load, refresh, verify, page in, run the model
    API Gateway REST (v1) / HTTP API (v2), Function URL, ALB -> the FastAPI app through Mangum
    Lambda@Edge, VPC Lattice, anything else             -> {"error": {"code": "unsupported_event", ...}}

Event shapes are told apart in search/serve/lambda_events.py.  Warmups are answered here because
Mangum raises on events it does not recognise.  Mangum runs
with ``lifespan="off"``: with lifespan on it would start and stop the app on every invocation.
"""

from __future__ import annotations

import os
import time

from aws_lambda_powertools.metrics import MetricUnit
from mangum import Mangum

from search.serve import lambda_events, observability, runtime
from search.serve.app import create_app
from search.serve.errors import error_body
from search.serve.observability import logger, metrics, tracer
from search.settings import Settings
from search.storage.s3 import deadline_for_lambda

_adapter: dict = {"runtime": None, "mangum": None}


def lambda_settings() -> Settings:
    """The environment's settings; searches run inline (no CPU executor) unless SEARCH_CPU_WORKERS
    says otherwise, since an execution environment serves one request at a time (its onnxruntime
    run gets every core, and nothing else needs the event loop meanwhile)."""
    return Settings.resolve(cpu_workers=None if os.environ.get("SEARCH_CPU_WORKERS") else 0)


def _runtime() -> runtime.Runtime:
    rt = runtime.peek_runtime()
    return rt if rt is not None else runtime.get_runtime(lambda_settings())


def _mangum(rt: runtime.Runtime) -> Mangum:
    """One app + adapter per runtime (tests swap the runtime to simulate a new environment)."""
    if _adapter["runtime"] is not rt:
        app = create_app(runtime=rt, observer=observability.record_request)
        _adapter.update(
            runtime=rt, mangum=Mangum(app, lifespan="off", api_gateway_base_path=rt.settings.base_path or "/")
        )
    return _adapter["mangum"]


def _bad_http_event(request_id: str | None) -> dict:
    """An HTTP-shaped event Mangum could not turn into a request: answer 400, not a crash."""
    body = error_body("bad_event", "the event looks like an HTTP request but is malformed", request_id)
    return lambda_events.http_response(400, body)


@logger.inject_lambda_context(log_event=False, clear_state=True)  # log_event=False: events carry query text
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event, context):
    rt = _runtime()
    rt.invocations += 1
    cold_start = rt.invocations == 1
    if lambda_events.is_warmup(event):
        result = rt.warm(deadline=deadline_for_lambda(context))
        result["cold_start"] = cold_start
        metrics.add_metric(name="Warmup", unit=MetricUnit.Count, value=1)
        logger.info("warmup", extra={k: v for k, v in result.items() if k != "error"})
        return result
    adapter = _mangum(rt)
    try:
        if not isinstance(event, dict):
            raise TypeError(type(event).__name__)
        kind = lambda_events.unsupported_kind(event)
        if kind is not None:
            raise TypeError(kind)
        adapter.infer(event, context)
    except (RuntimeError, TypeError):  # not an object, or no HTTP shape Mangum knows
        metrics.add_metric(name="UnsupportedEvent", unit=MetricUnit.Count, value=1)
        logger.warning(
            "unsupported event",
            extra={"event_type": type(event).__name__, "keys": sorted(event)[:20] if isinstance(event, dict) else None},
        )
        return lambda_events.unsupported()
    request_id = lambda_events.request_id(event)
    if request_id:
        logger.set_correlation_id(request_id)
    t0 = time.perf_counter()
    try:
        response = adapter(event, context)
    except Exception:  # Mangum could not build the request scope from this event
        logger.exception("malformed HTTP event")
        response = _bad_http_event(request_id)
    observability.record_status(int(response.get("statusCode", 500)))
    logger.debug("invocation", extra={"ms": round((time.perf_counter() - t0) * 1000, 3)})
    return response


class _LocalContext:
    """What Powertools reads from a Lambda context, for direct calls like ``handler(event, None)``."""

    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "search-local")
    function_version = "$LATEST"
    memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0") or 0)
    invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
    aws_request_id = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000  # Lambda's longest timeout: no tighter deadline than a real invocation


def handler(event, context=None):
    return lambda_handler(event, context if context is not None else _LocalContext())


# At init (in Lambda only): load now, once per environment, before any request waits.  A failure
# raises, so the runtime client reports it to /runtime/init/error in one readable line and Lambda
# starts a fresh environment for the next request, instead of keeping one that cannot answer.
# No deadline: if loading outlasts the 10 s init phase, Lambda retries it within the first
# invocation under the function timeout.
def _after_restore() -> None:
    """SnapStart: the snapshot may be days old.  Look for a newer index version now (one HEAD),
    before the first request of the restored environment."""
    rt = _runtime()
    if rt.live is not None and rt.live.ready:
        rt.live.maybe_refresh(force=True)
    logger.info("restored from snapshot", extra={"index_version": rt.live.version if rt.live else None})


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    _runtime().load()
    try:  # present in the Lambda Python 3.12+ runtime (and in awslambdaric's dependencies)
        from snapshot_restore_py import register_after_restore
    except ImportError:
        register_after_restore = None
    if register_after_restore is not None:
        register_after_restore(_after_restore)
