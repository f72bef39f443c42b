"""``/docs`` (Swagger UI) with every asset served by the app itself; ``/redoc`` redirects there.

FastAPI's own pages load Swagger UI and ReDoc from a CDN at a floating major version, with no
integrity hash and no CSP.  Here the scripts and styles are the files the pinned package
``fastapi-offline`` ships (requirements.txt), served by ``/static/{name}`` (web.py), and each
page has a CSP that allows only this origin plus its one inline script, by hash.  No request
leaves the host.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse

DOCS_PACKAGE = "fastapi_offline"  # ships swagger-ui-bundle.js, swagger-ui.css (and ReDoc, unused)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
COMMON_POLICY = [
    "default-src 'none'",
    "style-src 'self' 'unsafe-inline'",  # both UIs set inline styles on their elements
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",  # the spec and "Try it out"
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
]
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


@cache
def assets_dir() -> Path:
    """Where the package keeps its static files (found without importing it: no cold-start cost)."""
    spec = importlib.util.find_spec(DOCS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{DOCS_PACKAGE} is not installed (pip install -r requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _policy(html: str) -> str:
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in INLINE_SCRIPT.findall(html)
    ]
    return "; ".join([*COMMON_POLICY, " ".join(["script-src 'self'", *hashes])])


def _page(html: str) -> HTMLResponse:
    headers = {
        "Content-Security-Policy": _policy(html),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return HTMLResponse(html, headers=headers)


def router(app: FastAPI) -> APIRouter:
    docs = APIRouter(include_in_schema=False)

    def urls(request: Request) -> tuple[str, str]:
        root = (request.scope.get("root_path") or "").rstrip("/")
        return root + (app.openapi_url or "/openapi.json"), root + "/static/"

    @docs.get("/docs")
    async def swagger(request: Request) -> HTMLResponse:
        spec, static = urls(request)
        html = get_swagger_ui_html(
            openapi_url=spec,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=static + "swagger-ui-bundle.js",
            swagger_css_url=static + "swagger-ui.css",
            swagger_favicon_url=static + "favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        ).body
        return _page(bytes(html).decode())

    @docs.get("/redoc")
    async def redoc(request: Request) -> RedirectResponse:
        # ReDoc's bundle loads its logo from cdn.redoc.ly whatever its options: one UI, offline
        return RedirectResponse(urls(request)[0].removesuffix("openapi.json") + "docs", status_code=307)

    return docs
