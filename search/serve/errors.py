"""The one HTTP error shape: ``{"error": {"code", "message"[, "details"]}, "request_id"}``.

Routes raise ``ApiError``; the app's exception handlers, its middleware (413, the last-resort
500) and the Lambda handler (a malformed HTTP event) all build the body with ``error_body``.
Validation details give location and type only, never the input.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from search.errors import (
    EncodeError,
    IndexCorruptError,
    IndexLoadError,
    ModelLoadError,
    QueryError,
    SearchError,
    StorageError,
)

MAX_ERROR_DETAILS = 10
MAX_LOC_PART_CHARS = 64
RETRY_AFTER_SECONDS = 1

# error codes
INVALID_REQUEST = "invalid_request"  # 422: failed validation (details: loc + type)
INVALID_QUERY = "invalid_query"  # 400: the index cannot answer it (unknown filter field, blank)
NOT_FOUND = "not_found"  # 404
NOT_READY = "not_ready"  # 503: model or index not loaded (yet); /readyz says why
OVERLOADED = "overloaded"  # 503: too many searches waiting; retry after a second
INDEX_CORRUPT = "index_corrupt"  # 503: the index's data is damaged (being repaired when it came from S3)
INTERNAL = "internal_error"  # 500
HTTP_CODES = {
    400: "bad_request",
    404: NOT_FOUND,
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: INVALID_REQUEST,
    429: "too_many_requests",
    500: INTERNAL,
    503: NOT_READY,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str, request_id: str | None, *, details: list | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error, "request_id": request_id}


def scope_request_id(scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def request_id(request: Request) -> str | None:
    return scope_request_id(request.scope)


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    details: list | None = None,
    headers: dict[str, str] | None = None,
    extra: dict | None = None,
) -> JSONResponse:
    body = {**error_body(code, message, request_id(request), details=details), **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


async def send_error(scope, receive, send, status: int, message: str) -> None:
    """The error shape from the middleware, outside any route (413 before the body, the last 500)."""
    body = error_body(HTTP_CODES.get(status, INTERNAL), message, scope_request_id(scope))
    await JSONResponse(body, status_code=status)(scope, receive, send)


LOC_ROOTS = frozenset({"body", "query", "path", "header", "cookie"})
UNKNOWN_FIELD = "(unknown field)"  # stands for a key the client sent that the API does not have
ANY_KEY = "*"  # stands for a key of the client's own (a filter field name)


def _loc_part(part, err_type: str, last: bool, known: frozenset[str]):
    if isinstance(part, int) or part in LOC_ROOTS or part in known:
        return part
    return UNKNOWN_FIELD if err_type == "extra_forbidden" and last else ANY_KEY


def validation_details(errors, known: frozenset[str] = frozenset()) -> tuple[str, list[dict]]:
    """(one-line message, [{"loc", "type"}]) from pydantic errors, leaving out ``input`` and ``ctx``.
    Location parts that are not the API's own names (``known``: fields and parameters) are keys the
    client chose; they are not echoed either (an unknown key, a filter field name)."""
    details = []
    for err in list(errors)[:MAX_ERROR_DETAILS]:
        raw, err_type = list(err.get("loc", ())), str(err.get("type", "invalid"))
        loc = [_loc_part(p, err_type, i == len(raw) - 1, known) for i, p in enumerate(raw)]
        details.append({"loc": loc, "type": err_type})
    first = list(errors)[:1]
    if first:
        where = ".".join(str(p) for p in details[0]["loc"]) or "request"
        # pydantic's messages are templates ("String should have at most 1000 characters"); they
        # never contain the input, which is kept apart in the error's "input" key (dropped here).
        what = "unknown field" if details[0]["type"] == "extra_forbidden" else str(first[0].get("msg", "invalid"))
        message = f"invalid request: {where}: {what[:200]}"
    else:
        message = "invalid request"
    return message, details


def search_error_status(exc: SearchError) -> tuple[int, str]:
    if isinstance(exc, (QueryError, EncodeError)):
        return 400, INVALID_QUERY
    if isinstance(exc, IndexCorruptError):
        return 503, INDEX_CORRUPT
    if isinstance(exc, (ModelLoadError, IndexLoadError, StorageError)) or type(exc) is SearchError:
        return 503, NOT_READY  # (a bare SearchError is the runtime's "loading failed unexpectedly")
    return 500, INTERNAL
