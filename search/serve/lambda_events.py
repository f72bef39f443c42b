"""Everything this package knows about the shapes of AWS Lambda events, in one place.

    {"warmup": true}, EventBridge "Scheduled Event"      a warmup (handler.py answers it)
    API Gateway REST (v1), HTTP API (1.0, 2.0), Function URL, ALB   HTTP requests (through Mangum)

Mangum turns an HTTP event into an ASGI scope and keeps the event at ``scope["aws.event"]``; the
app reads the request id and the public path prefix (an API Gateway stage) from it here.
"""

from __future__ import annotations

import json
from typing import Any

EVENT_KEY = "aws.event"  # where Mangum puts the Lambda event in the ASGI scope
UNSUPPORTED_MESSAGE = (
    "this function answers HTTP events (API Gateway, Function URL, ALB) and warmups "
    '({"warmup": true} or an EventBridge scheduled event)'
)


def is_warmup(event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    if event.get("warmup") is True:
        return True
    return event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event"


def unsupported_kind(event: dict) -> str | None:
    """Events shaped like HTTP that this function does not serve (Mangum would half-accept them):
    CloudFront Lambda@Edge and VPC Lattice (payload 1 and 2)."""
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict) and "cf" in records[0]:
        return "lambda@edge"
    context = event.get("requestContext")
    if isinstance(context, dict) and ("serviceNetworkArn" in context or "targetGroupArn" in context):
        return "vpc-lattice"
    if "raw_path" in event and "method" in event:
        return "vpc-lattice"
    return None


def scope_event(scope) -> dict | None:
    """The Lambda event behind an ASGI request, when it came through Mangum."""
    event = scope.get(EVENT_KEY)
    return event if isinstance(event, dict) else None


def request_id(event: Any) -> str | None:
    """API Gateway (REST, HTTP) and Function URL request id; for an ALB, the X-Ray trace header."""
    if not isinstance(event, dict):
        return None
    context = event.get("requestContext")
    if isinstance(context, dict) and isinstance(context.get("requestId"), str):
        return context["requestId"]
    headers = event.get("headers")
    if isinstance(headers, dict):
        for key, value in headers.items():
            if isinstance(key, str) and key.lower() == "x-amzn-trace-id" and isinstance(value, str):
                return value
    multi = event.get("multiValueHeaders")
    if isinstance(multi, dict):
        for key, values in multi.items():
            if isinstance(key, str) and key.lower() == "x-amzn-trace-id" and values:
                return str(values[0])
    return None


def _named_stage(context: dict) -> str | None:
    stage = context.get("stage")
    return stage if isinstance(stage, str) and stage not in ("", "$default") else None


def apply_gateway_prefix(scope, base_path: str) -> None:
    """Set ``root_path`` to the prefix the client saw in front of the app, so generated URLs
    (/docs -> openapi.json, the page's <base>) include it, and keep ``path`` = root_path + route.

    REST API (v1): the gateway removed the stage (and any base path mapping) from ``path``;
    ``requestContext.path`` still has it.  HTTP API and Function URLs: a named stage stays at the
    front of the path.  SEARCH_BASE_PATH (stripped by Mangum) is taken as given."""
    event = scope_event(scope)
    if event is None or not isinstance(event.get("requestContext"), dict):
        return
    context = event["requestContext"]
    path = scope.get("path") or "/"
    full = context.get("path")  # REST API (v1) and HTTP API payload 1.0 only
    prefix = ""
    if base_path:
        prefix = base_path
    elif isinstance(full, str) and len(full) > len(path) and full.endswith(path):
        # REST API: the gateway took the stage (or a base path mapping) off ``path`` but not off
        # ``requestContext.path``; told apart by that, not by a "version" key some tools add.
        prefix = full[: len(full) - len(path)].rstrip("/")
    else:  # HTTP API (payload 1.0 or 2.0), Function URL
        stage = _named_stage(context)
        if stage is not None and (path == f"/{stage}" or path.startswith(f"/{stage}/")):
            scope["root_path"] = f"/{stage}"
            return
    if prefix:
        scope["root_path"] = prefix
        scope["path"] = prefix + path


def rest_stage_prefix(event: Any) -> str | None:
    """``/stage/`` when a REST API (v1) event's ``requestContext.path`` (what the client asked for,
    stage included) starts with its stage."""
    context = event.get("requestContext") if isinstance(event, dict) else None
    if not isinstance(context, dict):
        return None
    stage, path = _named_stage(context), context.get("path")
    if stage is not None and isinstance(path, str) and (path == f"/{stage}" or path.startswith(f"/{stage}/")):
        return f"/{stage}/"
    return None


def http_response(status: int, body: dict) -> dict:
    """A Lambda proxy-integration response carrying a JSON body."""
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def unsupported(message: str = UNSUPPORTED_MESSAGE) -> dict:
    """The answer to an event that is neither HTTP nor a warmup (no HTTP status: nobody reads one)."""
    return {"error": {"code": "unsupported_event", "message": message}}
