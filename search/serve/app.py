"""The FastAPI app: the same object behind ``python -m search serve`` and the Lambda handler.

``create_app()`` uses the process-wide runtime (settings from the environment); ``create_app(settings)``
gets a runtime of its own (tests, embedding); ``create_app(runtime=...)`` shares a given one.

A small ASGI middleware wraps every request: request id (API Gateway's, else X-Request-Id, else
new), the public path prefix behind an API Gateway stage (so /docs finds /prod/openapi.json), the
body size limit, a 422 for a query string that is not UTF-8, one access-log line without the
query string, and a last-resort 500 in the error shape (logged with its traceback, never sent).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from search import __version__
from search.errors import SearchError
from search.serve import docs, lambda_events, web
from search.serve.errors import (
    HTTP_CODES,
    ApiError,
    error_response,
    search_error_status,
    send_error,
    validation_details,
)
from search.serve.observability import REQUEST_ID_RE, logger
from search.serve.routes import api_names, build_router
from search.serve.runtime import Runtime, get_runtime
from search.settings import Settings

UNTYPED_BODY = (None, b"application/x-www-form-urlencoded", b"text/plain")  # a JSON object is still taken
QUIET_PATHS = frozenset({"/livez", "/readyz"})
JSON_CACHE_CONTROL = b"no-store"  # probes: access log at DEBUG only
DESCRIPTION = """Meaning-based search over one catalogue: the query is embedded with a sentence-embedding
model and compared with every item (exact top-k).  Errors are `{"error": {"code", "message"}, "request_id"}`."""

JSON_INVALID_MESSAGE = "invalid request: body: JSON decode error"
Observer = Callable[[dict], None]


def create_app(
    settings: Settings | None = None, *, runtime: Runtime | None = None, observer: Observer | None = None
) -> FastAPI:
    owns_runtime = runtime is None and settings is not None
    if runtime is None:
        runtime = Runtime(settings) if settings is not None else get_runtime()
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        runtime.start_loading()  # /livez answers at once; /readyz turns 200 when loaded
        yield
        if owns_runtime:
            runtime.close()

    app = FastAPI(
        title="Semantic search",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # docs.py serves /docs and /redoc with local assets under a CSP
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.runtime = runtime
    app.include_router(build_router(settings, runtime))
    app.include_router(web.router)
    app.include_router(docs.router(app))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(request, exc.status, exc.code, exc.message, headers=exc.headers)

    known = api_names(settings)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, details = validation_details(exc.errors(), known)
        return error_response(request, 422, HTTP_CODES[422], message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            # FastAPI's "error parsing the body": JSON that is not UTF-8, nested too deeply or holds
            # an integer too long to parse; invalid JSON like any other (422 json_invalid)
            details = [{"loc": ["body"], "type": "json_invalid"}]
            return error_response(request, 422, HTTP_CODES[422], JSON_INVALID_MESSAGE, details=details)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(app, request.scope))}
        return error_response(
            request, exc.status_code, HTTP_CODES.get(exc.status_code, "error"), message, headers=headers
        )

    @app.exception_handler(SearchError)
    async def _search_error(request: Request, exc: SearchError):
        status, code = search_error_status(exc)
        return error_response(request, status, code, str(exc) if status < 500 else "the search failed")

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type"],
            expose_headers=["server-timing", "x-request-id"],
            max_age=600,
        )
    app.add_middleware(
        RequestContext, max_body_bytes=settings.max_body_bytes, base_path=settings.base_path, observer=observer
    )
    return app


class RequestContext:
    """Pure ASGI (no per-request task or body buffering, unlike BaseHTTPMiddleware)."""

    def __init__(self, app, *, max_body_bytes: int, base_path: str = "", observer: Observer | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.base_path = base_path
        self.observer = observer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        rid = state["request_id"] = _request_id(scope)
        if lambda_events.scope_event(scope) is not None:
            lambda_events.apply_gateway_prefix(scope, self.base_path)
        sent = {"status": 0}
        head = scope.get("method") == "HEAD"
        if head:  # every GET route answers HEAD too: the same status and headers, no body
            scope = {**scope, "method": "GET"}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                message = {**message, "headers": _with_defaults(message.get("headers", []), rid)}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        limit, received = self.max_body_bytes, 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        try:
            if not _utf8_query(scope) and _route_path(scope) != "/":  # the page reads its own (app.js)
                await send_error(
                    scope, receive, send_with_id, 422, "invalid request: the query string is not valid UTF-8"
                )
                return
            if _content_length(scope) > limit:
                await send_error(scope, receive, send_with_id, 413, f"request body larger than {limit} bytes")
                return
            if scope.get("method") == "POST" and _header(scope, b"content-type") in UNTYPED_BODY:
                try:
                    scope, app_receive = await _json_if_object(scope, receive_limited)
                except HTTPException as exc:  # too large, found while reading it here
                    await send_error(scope, receive, send_with_id, exc.status_code, str(exc.detail))
                    return
            else:
                app_receive = receive_limited
            await self.app(scope, app_receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"request_id": rid, "path": printable(scope.get("path"))})
            if not sent["status"]:
                await send_error(scope, receive, send_with_id, 500, "internal error; quote the request id")
            sent["status"] = sent["status"] or 500
        finally:
            self._finish(scope, state, sent["status"] or 500, t0)

    def _finish(self, scope, state: dict, status: int, t0: float) -> None:
        record: dict[str, Any] = {
            "method": scope.get("method"),
            "path": printable(scope.get("path")),
            "status": status,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
        }
        search = state.get("search")
        if search:
            record.update(search)
        log = logger.debug if _route_path(scope) in QUIET_PATHS else logger.info
        log(
            "request",
            extra={**{k: v for k, v in record.items() if k != "timing_ms"}, "request_id": state.get("request_id")},
        )
        if self.observer is not None:
            try:
                self.observer(record)
            except Exception:  # metrics must never break a response
                logger.exception("request observer failed")


def _with_defaults(headers, rid: str) -> list:
    """Every response: the request id and nosniff; JSON also an explicit cache policy (answers
    change when a new index version is swapped in, so none is stored)."""
    names = {k.lower() for k, _ in headers}
    out = [*headers, (b"x-request-id", rid.encode())]
    if b"x-content-type-options" not in names:
        out.append((b"x-content-type-options", b"nosniff"))
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if content_type.startswith(b"application/json") and b"cache-control" not in names:
        out.append((b"cache-control", JSON_CACHE_CONTROL))
    return out


def _leaf_routes(routes):
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.16x wraps included routers
        if included is not None:
            yield from _leaf_routes(included.routes)
        else:
            yield route


def _allowed_methods(app: FastAPI, scope) -> list[str]:
    methods: set[str] = set()
    for route in _leaf_routes(app.router.routes):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods - {"HEAD"})


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.split(b";")[0].strip().lower()
    return None


def _utf8_query(scope) -> bool:
    """Whether the query string, percent-decoded, is UTF-8 (``&``, ``=`` and ``+`` are ASCII, so
    decoding it whole is decoding every name and value).  Starlette would decode other bytes to
    U+FFFD: a search for that, or a filter value that matches nothing."""
    raw = scope.get("query_string") or b""
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _content_length(scope) -> int:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


async def _json_if_object(scope, receive):
    """A POST body sent without a JSON content type (none at all, or what ``curl -d`` sends): read it
    (``receive`` enforces the size limit) and, when it parses as a JSON object, hand it on as
    application/json.  Anything else goes on unchanged and fails validation as before."""
    chunks, more, message = [], True, None
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    try:
        is_object = isinstance(json.loads(body), dict)
    except ValueError:  # also UnicodeDecodeError
        is_object = False
    if is_object:
        headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
    replay: list = [{"type": "http.request", "body": body, "more_body": False}]
    if message is not None and message["type"] != "http.request":
        replay = [message]  # the client went away: pass that on

    async def replayed():
        return replay.pop(0) if replay else await receive()

    return scope, replayed


def printable(text: str | None) -> str | None:
    """A path as a log line can carry it: a lone surrogate (from a Lambda event) becomes \\udXXX."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _request_id(scope) -> str:
    rid = lambda_events.request_id(lambda_events.scope_event(scope))
    if rid:
        return rid[:128]
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID_RE.match(text):
                return text
    return uuid.uuid4().hex


def _route_path(scope) -> str:
    root = scope.get("root_path") or ""
    path = scope.get("path") or ""
    return path[len(root) :] if root and path.startswith(root) else path
