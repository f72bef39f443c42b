"""The search page: ``GET /`` and its static assets, served by the app itself (no CDN, no build step).

Every URL in the page is relative, so it works unchanged under an API Gateway stage prefix
(``https://…/prod/``).  When the public prefix is known (a root path, or a REST API stage seen in
the Lambda event) the page also gets a ``<base href>``, so ``…/prod`` without the slash works too.
"""

from __future__ import annotations

import hashlib
import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from search.serve import docs, lambda_events

STATIC_DIR = Path(__file__).resolve().with_name("static")
# The only files served: name -> content type.  A fixed list, so no path ever reaches the file system.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
PAGE_FILE = "index.html"
BASE_MARKER = "<!--base-->"
ASSET_MAX_AGE_SECONDS = 300  # assets are not content-hashed: keep caches short so a deploy shows up soon

# The page loads only its own script and style; the data it shows can never run as code.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> tuple[bytes, str]:
    """File bytes and a strong ETag; read on first use, not at import (cold start stays lean)."""
    folder = docs.assets_dir() if name in docs.ASSETS else STATIC_DIR
    data = (folder / name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def public_prefix(request: Request) -> str | None:
    """The path prefix the browser sees in front of this app, e.g. ``/prod/``, when it is known."""
    root = request.scope.get("root_path") or ""
    if root.strip("/"):
        return "/" + root.strip("/") + "/"
    return lambda_events.rest_stage_prefix(lambda_events.scope_event(request.scope))


@router.get("/")
async def page(request: Request) -> Response:
    data, _ = _read(PAGE_FILE)
    prefix = public_prefix(request)
    text = data.decode("utf-8")
    base = f'<base href="{html.escape(prefix, quote=True)}">' if prefix else ""
    body = text.replace(BASE_MARKER, base, 1)
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


@router.get("/static/{name}")
async def asset(name: str, request: Request) -> Response:
    content_type = ASSETS.get(name) or docs.ASSETS.get(name)
    if content_type is None:
        raise HTTPException(status_code=404, detail="no such file")
    data, etag = _read(name)
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": f"public, max-age={ASSET_MAX_AGE_SECONDS}"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=content_type, headers=headers)
