"""The HTTP API: routes, request and response models, limits, and the one error shape.

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

import inspect
import platform
import time
from functools import lru_cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from search import __version__
from search import searcher as service
from search.errors import EncodeError, IndexLoadError, ModelLoadError, QueryError, SearchError, StorageError
from search.searcher import Searcher
from search.serve.observability import logger, trace_stages
from search.serve.runtime import Overloaded, Runtime
from search.settings import Settings

MODES = getattr(service, "MODES", ("semantic", "keyword", "hybrid"))
Mode = Literal["semantic", "keyword", "hybrid"]
RESERVED_PARAMS = frozenset({"q", "k", "offset", "min_score", "mode"})  # GET /search: the rest are filters
MAX_FILTER_FIELDS = 16
MAX_FILTER_VALUES = 256  # values per field (any-of)
MAX_FILTER_VALUE_CHARS = 512
MAX_ITEM_ID_CHARS = 1024
MAX_ERROR_DETAILS = 10
MAX_LOC_PART_CHARS = 64
INFO_FIELD_VALUES = 50  # most common values per field shown by /info (the page's filter menus)
RETRY_AFTER_SECONDS = 1
NOT_BLANK = r"\S"  # a query has at least one non-space character

# error codes
INVALID_REQUEST = "invalid_request"  # 422: failed validation (details: loc + type)
INVALID_QUERY = "invalid_query"  # 400: the index cannot answer it (unknown filter field, blank)
NOT_FOUND = "not_found"  # 404
NOT_READY = "not_ready"  # 503: model or index not loaded (yet); /readyz says why
OVERLOADED = "overloaded"  # 503: too many searches waiting; retry after a second
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


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


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
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    body = {"error": error, "request_id": request_id(request), **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_details(errors) -> tuple[str, list[dict]]:
    """(one-line message, [{"loc", "type"}]) from pydantic errors, leaving out ``input`` and ``ctx``."""
    details = []
    for err in list(errors)[:MAX_ERROR_DETAILS]:
        loc = [p if isinstance(p, int) else str(p)[:MAX_LOC_PART_CHARS] for p in err.get("loc", ())]
        details.append({"loc": loc, "type": str(err.get("type", "invalid"))})
    first = list(errors)[:1]
    if first:
        where = ".".join(str(p) for p in details[0]["loc"]) or "request"
        # pydantic's messages are templates ("String should have at most 1000 characters"); they
        # never contain the input, which is kept apart in the error's "input" key (dropped here).
        message = f"invalid request: {where}: {str(first[0].get('msg', 'invalid'))[:200]}"
    else:
        message = "invalid request"
    return message, details


def search_error_status(exc: SearchError) -> tuple[int, str]:
    if isinstance(exc, (QueryError, EncodeError)):
        return 400, INVALID_QUERY
    if isinstance(exc, (ModelLoadError, IndexLoadError, StorageError)) or type(exc) is SearchError:
        return 503, NOT_READY  # (a bare SearchError is the runtime's "loading failed unexpectedly")
    return 500, INTERNAL


# -- request and response models ---------------------------------------------------------------


def _valid_unicode(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800); they cannot be encoded, tokenised or stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("string_unicode", "String should be valid Unicode (no lone surrogates)") from None
    return text


FilterValue = Annotated[str, StringConstraints(max_length=MAX_FILTER_VALUE_CHARS), AfterValidator(_valid_unicode)]


def _as_list(value):
    return [value] if isinstance(value, str) else value


# "games" or ["games", "x11"] (any of); always a list after validation
_FilterList = Annotated[list[FilterValue], Field(max_length=MAX_FILTER_VALUES)]
FilterValues = Annotated[_FilterList, BeforeValidator(_as_list, json_schema_input_type=FilterValue | _FilterList)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_valid_unicode)]


class Hit(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    score: float
    title: str
    fields: dict[str, Any]
    signals: list[str] | None = Field(None, description="what found it: semantic, keyword, exact")


class IndexRef(BaseModel):
    version: str
    count: int


class SearchResponse(BaseModel):
    query: str
    results: list[Hit]
    k: int
    offset: int
    mode: str | None = Field(None, description="the ranking that answered (hybrid may fall back to semantic)")
    note: str | None = Field(None, description="why the mode fell back, when it did")
    index: IndexRef
    timing_ms: dict[str, float]


class BatchResponse(BaseModel):
    queries: list[str]
    results: list[list[Hit]] = Field(description="one result list per query, in the order given")
    k: int
    offset: int
    mode: str | None = None
    note: str | None = None
    index: IndexRef
    timing_ms: dict[str, float]


class SimilarResponse(BaseModel):
    id: str
    results: list[Hit]
    k: int
    offset: int
    index: IndexRef
    timing_ms: dict[str, float]


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    title: str
    text: str
    fields: dict[str, Any]


class ErrorDetail(BaseModel):
    loc: list[str | int]
    type: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: ErrorInfo
    request_id: str | None


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    model_config = ConfigDict(extra="allow")
    ready: bool
    state: str


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse} for s in statuses}


def search_request_model(settings: Settings) -> type[BaseModel]:
    """The POST /search body, with this deployment's limits in the schema."""
    QueryText = Annotated[
        str,
        StringConstraints(min_length=1, max_length=settings.max_query_chars, pattern=NOT_BLANK),
        AfterValidator(_valid_unicode),
    ]

    class SearchRequest(BaseModel):
        # python-re: the blank check means what str.isspace() means, as in the encoder
        model_config = ConfigDict(
            extra="forbid",
            regex_engine="python-re",
            json_schema_extra={
                "oneOf": [{"required": ["query"]}, {"required": ["queries"]}],
                "examples": [
                    {"query": "space shooter with power-ups", "k": 5},
                    {"queries": ["chess engine", "racing game"], "k": 3, "filter": {"section": ["games"]}},
                ],
            },
        )
        # Not nullable: give one of the two keys, not a null (the schema's oneOf says the same).
        query: QueryText = Field(None, description="the text to search for (give this or `queries`)")
        queries: Annotated[list[QueryText], Field(min_length=1, max_length=settings.max_batch)] = Field(
            None, description=f"up to {settings.max_batch} texts; one result list each"
        )
        k: int = Field(10, ge=1, le=settings.max_k, description="results per query")
        offset: int = Field(0, ge=0, le=settings.max_offset, description="skip this many results (paging)")
        min_score: float | None = Field(
            None, ge=-1.0, le=1.0, allow_inf_nan=False, description="drop results scoring below this"
        )
        filter: Annotated[dict[FieldName, FilterValues], Field(max_length=MAX_FILTER_FIELDS)] | None = Field(
            None, description="field -> value or list of values (any of); fields combine with AND"
        )
        mode: Mode | None = Field(None, description="semantic, keyword or hybrid ranking (default: the server's)")

        @field_validator("k", "offset", "min_score", mode="before")
        @classmethod
        def _not_boolean(cls, value):
            # JSON true/false would pass as 1/0 in pydantic's lax mode; the schema says number
            if isinstance(value, bool):
                raise PydanticCustomError("number_type", "Input should be a number, not true or false")
            return value

        @model_validator(mode="after")
        def _one_of(self):
            if (self.query is None) == (self.queries is None):
                raise PydanticCustomError("query_or_queries", "Give exactly one of `query` or `queries`")
            return self

    return SearchRequest


# -- the router --------------------------------------------------------------------------------


def build_router(settings: Settings, runtime: Runtime) -> APIRouter:
    router = APIRouter()
    SearchRequest = search_request_model(settings)
    search_params = inspect.signature(Searcher.search).parameters
    supports_mode = "mode" in search_params
    default_mode = search_params["mode"].default if supports_mode else "semantic"

    def mode_kwargs(mode: str | None) -> dict:
        if supports_mode:
            return {"mode": mode} if mode is not None else {}
        if mode not in (None, "semantic"):
            raise ApiError(400, INVALID_QUERY, "this server offers semantic search only (mode=semantic)")
        return {}

    def effective_mode(mode: str | None) -> str | None:
        return (mode or default_mode) if supports_mode else None

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
        extra = mode_kwargs(mode)
        for i, text in enumerate(queries):
            if not text.strip():
                where = f"queries[{i}]" if batch else "query"
                raise ApiError(400, INVALID_QUERY, f"{where} is empty or whitespace only")
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
        if supports_mode:
            body["mode"] = getattr(results[0], "mode", None) or effective_mode(mode)
            note = getattr(results[0], "note", None)
            if note:
                body["note"] = note
        body.update(index={"version": index.version, "count": index.count}, timing_ms=timing)
        return JSONResponse(body, headers={"Server-Timing": server_timing(timing)})

    def query_filters(request: Request) -> dict[str, list[str]]:
        filters: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            if name in RESERVED_PARAMS:
                continue
            if len(name) > 64 or len(value) > MAX_FILTER_VALUE_CHARS:
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
        responses=_errors(400, 404, 422, 500, 503),
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
        responses=_errors(400, 413, 422, 500, 503),
        summary="Search by meaning (one query or a batch)",
    )
    async def search_post(request: Request, body: SearchRequest):  # type: ignore[valid-type]
        filters = dict(body.filter or {})
        batch = body.queries is not None
        queries = list(body.queries) if batch else [body.query]
        return await do_search(request, queries, body.k, body.offset, body.min_score, filters, body.mode, batch)

    ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ITEM_ID_CHARS, description="the item's id")]

    def item_job(item_id: str):
        searcher, index = runtime.pin()
        return searcher.item(item_id, index=index)

    # {item_id:path}: ids may contain "/"; the /similar route is declared first so it wins.
    @router.get(
        "/items/{item_id:path}/similar",
        response_model=SimilarResponse,
        responses=_errors(400, 404, 422, 503),
        summary="Items like this one",
        description=filter_note,
    )
    async def similar(request: Request, item_id: ItemId, k: QK = 10, offset: QOffset = 0, min_score: QMinScore = None):
        t0 = time.perf_counter()
        filters = query_filters(request)

        def job():
            started = time.perf_counter()
            searcher, index = runtime.pin()
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
        "/items/{item_id:path}", response_model=Item, responses=_errors(404, 422, 503), summary="The stored record"
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
        responses=_errors(503),
        summary="200 when the model and index are loaded; otherwise 503 and why",
    )
    async def readyz(request: Request):
        status = runtime.status()
        if status["ready"]:
            return JSONResponse(status)
        runtime.start_loading()  # a probe on a cold process starts the load (in the background)
        return error_response(
            request,
            503,
            NOT_READY,
            status.get("reason", "not loaded yet"),
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            extra={"ready": False, "state": status["state"]},
        )

    @router.get("/info", responses=_errors(503), summary="Model, index, limits and versions")
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
            "versions": versions(),
        }
        if supports_mode:
            body["modes"] = {"available": list(MODES), "default": default_mode}
        return JSONResponse(body)

    return router


def model_info(runtime: Runtime) -> dict:
    bundle = runtime.encoder.bundle
    return {
        "name": bundle.source_model,
        "dimension": bundle.dimension,
        "quantization": bundle.quantization,
        "quantized": bundle.quantized,
        "pooling": bundle.pooling,
        "max_seq_length": bundle.max_seq_length,
        "fingerprint": bundle.fingerprint[:12],
    }


_index_info_cache: dict[tuple, dict] = {}


def index_info(index) -> dict:
    """Facts and the most common values per field; computed once per index version."""
    key = (id(index), index.version)
    cached = _index_info_cache.get(key)
    if cached is None:
        m = index.manifest
        cached = {
            "version": index.version,
            "count": index.count,
            "fields": index.fields,
            "dimension": index.dimension,
            "dtype": index.dtype,
            "built_at": m.get("built_at"),
            "filters": {
                f: [{"value": v, "count": c} for v, c in index.metadata.field_values(f, INFO_FIELD_VALUES)]
                for f in index.fields
            },
        }
        _index_info_cache.clear()  # one version at a time
        _index_info_cache[key] = cached
    return cached


@lru_cache(maxsize=1)
def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"search": __version__, "python": platform.python_version()}
    for dist in ("numpy", "onnxruntime", "tokenizers", "fastapi"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def server_timing(timing: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={ms}" for name, ms in timing.items())


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
