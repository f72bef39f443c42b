"""The HTTP API's routes (models and limits: schemas.py; the error shape: errors.py).

    GET  /search?q=...&k=10&offset=0&min_score=&mode=&<field>=<value>   (repeat a field: any of)
    POST /search  {"query": "...", "k", "offset", "min_score", "filter": {"section": ["games"]}, "mode"}
                  {"queries": ["...", "..."], ...}: one result list per query, each the same as alone
    GET  /items/{id}            the stored record
    GET  /items/{id}/similar    nearest items to that item's vector, itself left out
    GET  /livez  /readyz  /info

Every error is ``{"error": {"code", "message"[, "details"]}, "request_id"}``.  Validation details
give location and type only, never the input; unexpected failures give no traceback.
CPU work (embedding, scoring) runs on the runtime's bounded executor; health routes never wait.
"""

import time
import unicodedata
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from search.errors import IndexCorruptError, QueryError, SearchError
from search.searcher import DEFAULT_MODE, MODES
from search.serve.errors import (
    INDEX_CORRUPT,
    INVALID_QUERY,
    INVALID_REQUEST,
    NOT_FOUND,
    NOT_READY,
    OVERLOADED,
    RETRY_AFTER_SECONDS,
    ApiError,
    error_response,
    search_error_status,
)
from search.serve.info import index_info, model_info, versions
from search.serve.observability import logger, trace_stages
from search.serve.runtime import REASONS, Overloaded, Runtime
from search.serve.schemas import (
    MAX_FIELD_NAME_CHARS,
    MAX_FILTER_FIELDS,
    MAX_FILTER_VALUE_CHARS,
    MAX_FILTER_VALUES,
    MAX_ITEM_ID_CHARS,
    NOT_BLANK,
    BatchResponse,
    Item,
    Live,
    Mode,
    Ready,
    SearchResponse,
    SimilarResponse,
    error_responses,
    search_request_model,
)
from search.settings import Settings

RESERVED_PARAMS = frozenset({"q", "k", "offset", "min_score", "mode"})  # GET /search: the rest are filters


# -- the router --------------------------------------------------------------------------------


def build_router(settings: Settings, runtime: Runtime) -> APIRouter:
    router = APIRouter()
    SearchRequest = search_request_model(settings)

    async def run(fn, *args):
        try:
            return await runtime.run(fn, *args)
        except Overloaded:
            raise ApiError(
                503,
                OVERLOADED,
                "too many searches are waiting; retry in a moment",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        except SearchError as exc:
            status, code = search_error_status(exc)
            if isinstance(exc, IndexCorruptError):
                runtime.report_corrupt(exc)  # logged with the file and row; the answer says neither
                raise ApiError(
                    503,
                    code,
                    "the index is damaged and cannot answer (see /readyz)",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                ) from None
            if status == 503:
                raise ApiError(
                    503,
                    code,
                    "the model or index is not loaded (see /readyz)",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                ) from None
            raise ApiError(status, code, str(exc)) from None

    def search_job(
        queries: list[str], k: int, offset: int, min_score: float | None, filters, extra: dict, submitted: float
    ):
        started = time.perf_counter()
        searcher, index = runtime.pin()
        known_filters(index, filters)
        results, starts = [], []
        for text in queries:
            starts.append(time.time())
            results.append(
                searcher.search(text, k=k, offset=offset, min_score=min_score, filters=filters, index=index, **extra)
            )
        return index, starts, results, _ms(started - submitted)

    async def do_search(
        request: Request,
        queries: list[str],
        k: int,
        offset: int,
        min_score: float | None,
        filters: dict | None,
        mode: str | None,
        batch: bool,
    ) -> JSONResponse:
        t0 = time.perf_counter()
        extra = {"mode": mode} if mode is not None else {}
        for i, text in enumerate(queries):
            if not searchable(text):
                where = f"queries[{i}]" if batch else "query"
                raise ApiError(
                    400,
                    INVALID_QUERY,
                    f"{where} has nothing to search for (only spaces, control or zero-width characters)",
                )
        index, starts, results, queue_ms = await run(
            search_job, queries, k, offset, min_score, filters or None, extra, t0
        )
        timing: dict[str, float] = {"queue": queue_ms}
        for result in results:
            for stage, ms in result.timing_ms.items():
                if stage != "total":
                    timing[stage] = round(timing.get(stage, 0.0) + ms, 3)
        timing["total"] = _ms(time.perf_counter() - t0)
        for started, result in zip(starts, results):
            trace_stages(started, result.timing_ms)
        count = sum(len(r.hits) for r in results)
        request.state.search = {"timing_ms": timing, "results": count, "queries": len(queries)}
        logger.debug("search", extra={"queries": queries, "results": count})
        body: dict[str, Any] = (
            {"queries": queries, "results": [r.hits for r in results]}
            if batch
            else {"query": queries[0], "results": results[0].hits}
        )
        body.update(k=k, offset=offset)
        body["mode"] = results[0].mode
        if results[0].note:
            body["note"] = results[0].note
        body.update(index={"version": index.version, "count": index.count}, timing_ms=timing)
        return JSONResponse(body, headers={"Server-Timing": server_timing(timing)})

    def query_filters(request: Request) -> dict[str, list[str]]:
        filters: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            if name in RESERVED_PARAMS:
                continue
            if len(name) > MAX_FIELD_NAME_CHARS or len(value) > MAX_FILTER_VALUE_CHARS:
                raise ApiError(422, INVALID_REQUEST, "invalid request: a filter name or value is too long")
            filters.setdefault(name, []).append(value)
            if len(filters) > MAX_FILTER_FIELDS or len(filters[name]) > MAX_FILTER_VALUES:
                raise ApiError(422, INVALID_REQUEST, "invalid request: too many filter fields or values")
        return filters

    QText = Annotated[
        str,
        Query(
            min_length=1, max_length=settings.max_query_chars, pattern=NOT_BLANK, description="the text to search for"
        ),
    ]
    QK = Annotated[int, Query(ge=1, le=settings.max_k, description="number of results")]
    QOffset = Annotated[int, Query(ge=0, le=settings.max_offset, description="skip this many results")]
    QMinScore = Annotated[
        float | None, Query(ge=-1.0, le=1.0, allow_inf_nan=False, description="drop results scoring below this")
    ]
    QMode = Annotated[Mode | None, Query(description="semantic, keyword or hybrid (default: the server's)")]
    filter_note = (
        "Any other query parameter filters on a stored field: `?section=games`; repeat it for any "
        "of several values (`?section=games&section=x11`); different fields combine with AND."
    )

    @router.get(
        "/search",
        response_model=SearchResponse,
        responses=error_responses(400, 404, 422, 500, 503),
        summary="Search by meaning",
        description=filter_note,
    )
    async def search_get(
        request: Request, q: QText, k: QK = 10, offset: QOffset = 0, min_score: QMinScore = None, mode: QMode = None
    ):
        return await do_search(request, [q], k, offset, min_score, query_filters(request), mode, batch=False)

    @router.post(
        "/search",
        response_model=SearchResponse | BatchResponse,
        responses=error_responses(400, 413, 422, 500, 503),
        summary="Search by meaning (one query or a batch)",
    )
    async def search_post(request: Request, body: SearchRequest):  # type: ignore[valid-type]
        req: Any = body  # a class made at run time: mypy cannot see its fields
        filters = dict(req.filter or {})
        batch = req.queries is not None
        queries = list(req.queries) if batch else [req.query]
        return await do_search(request, queries, req.k, req.offset, req.min_score, filters, req.mode, batch)

    ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ITEM_ID_CHARS, description="the item's id")]

    def item_job(item_id: str):
        searcher, index = runtime.pin()
        return searcher.item(item_id, index=index)

    # {item_id:path}: ids may contain "/"; the /similar route is declared first so it wins.
    @router.get(
        "/items/{item_id:path}/similar",
        response_model=SimilarResponse,
        responses=error_responses(400, 404, 422, 503),
        summary="Items like this one",
        description=filter_note,
    )
    async def similar(request: Request, item_id: ItemId, k: QK = 10, offset: QOffset = 0, min_score: QMinScore = None):
        t0 = time.perf_counter()
        filters = query_filters(request)

        def job():
            started = time.perf_counter()
            searcher, index = runtime.pin()
            known_filters(index, filters)
            at = time.time()
            return (
                index,
                at,
                searcher.similar(
                    item_id, k=k, offset=offset, min_score=min_score, filters=filters or None, index=index
                ),
                _ms(started - t0),
            )

        index, at, result, queue_ms = await run(job)
        if result is None:
            raise ApiError(404, NOT_FOUND, "no item with this id")
        trace_stages(at, result.timing_ms)
        timing = {
            "queue": queue_ms,
            **{s: v for s, v in result.timing_ms.items() if s != "total"},
            "total": _ms(time.perf_counter() - t0),
        }
        request.state.search = {"timing_ms": timing, "results": len(result.hits), "queries": 1}
        body = {
            "id": item_id,
            "results": result.hits,
            "k": k,
            "offset": offset,
            "index": {"version": index.version, "count": index.count},
            "timing_ms": timing,
        }
        return JSONResponse(body, headers={"Server-Timing": server_timing(timing)})

    @router.get(
        "/items/{item_id:path}",
        response_model=Item,
        responses=error_responses(404, 422, 503),
        summary="The stored record",
    )
    async def item(request: Request, item_id: ItemId):
        record = await run(item_job, item_id)
        if record is None:
            raise ApiError(404, NOT_FOUND, "no item with this id")
        return JSONResponse(record)

    @router.get("/livez", response_model=Live, summary="The process is up (never waits for searches)")
    async def livez():
        return JSONResponse({"status": "ok"})

    @router.get(
        "/readyz",
        response_model=Ready,
        responses=error_responses(503),
        summary="200 when the model and index are loaded; otherwise 503 and why",
    )
    async def readyz(request: Request):
        status = runtime.status()
        if status["ready"]:
            return JSONResponse(status)
        runtime.start_loading()  # a probe on a cold process starts the load (in the background)
        reason = status.get("reason", "not_loaded")
        return error_response(
            request,
            503,
            INDEX_CORRUPT if reason == INDEX_CORRUPT else NOT_READY,
            f"{reason}: {REASONS.get(reason, 'not ready')} (details in the server log)",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            extra={"ready": False, "state": status["state"], "reason": reason},
        )

    @router.get("/info", responses=error_responses(503), summary="Model, index, limits and versions")
    async def info(request: Request):
        if not runtime.ready:
            runtime.start_loading()
            return error_response(
                request,
                503,
                NOT_READY,
                "the model or index is not loaded (see /readyz)",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        assert runtime.live is not None  # runtime.ready
        index = runtime.live.current()
        body = {
            "model": model_info(runtime),
            "index": index_info(index),
            "limits": {
                "max_query_chars": settings.max_query_chars,
                "max_k": settings.max_k,
                "max_offset": settings.max_offset,
                "max_batch": settings.max_batch,
                "max_body_bytes": settings.max_body_bytes,
            },
            "modes": {"available": list(MODES), "default": DEFAULT_MODE},
        }
        if settings.info_versions:  # SEARCH_INFO_VERSIONS: exact versions help an attacker more than a user
            body["versions"] = versions()
        return JSONResponse(body)

    return router


def known_filters(index, filters: dict | None) -> None:
    """An unknown filter field is a 400 that lists the fields there are, not the name sent."""
    if filters and not set(filters) <= set(index.fields):
        known = ", ".join(index.fields) or "none"
        raise QueryError(f"a filter names an unknown field (filterable: {known})")


def api_names(settings: Settings) -> frozenset[str]:
    """The API's own field and parameter names: what a validation error may name back."""
    return frozenset(search_request_model(settings).model_fields) | RESERVED_PARAMS | {"item_id"}


def searchable(text: str) -> bool:
    """Some character that is not a space, a control or a format character (zero-width space,
    joiners, BOM): a query of only those would embed to noise and give arbitrary results."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text)


def server_timing(timing: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={ms}" for name, ms in timing.items())


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
