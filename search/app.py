"""The FastAPI app (minimal: GET /search).  The full API lives in its own issue."""

from __future__ import annotations

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from .errors import SearchError
from .service import Searcher
from .settings import Settings


def create_app(settings: Settings | None = None, searcher: Searcher | None = None) -> FastAPI:
    settings = settings or Settings.resolve()
    app = FastAPI(title="search", version="0.1.0")
    state = {"searcher": searcher}

    def get_searcher() -> Searcher:
        if state["searcher"] is None:
            state["searcher"] = Searcher.open(settings.model_dir, settings.index_uri, threads=settings.threads,
                                              cache_size=settings.query_cache_size)
        return state["searcher"]

    @app.get("/search")
    def search(q: str = Query(..., min_length=1, max_length=settings.max_query_chars),
               k: int = Query(10, ge=1, le=settings.max_k)):
        try:
            result = get_searcher().search(q, k=k)
        except SearchError as exc:
            return JSONResponse({"error": {"code": "bad_request", "message": str(exc)}}, status_code=400)
        return {"query": q, "results": result.hits, "k": k, "timing_ms": result.timing_ms}

    return app
