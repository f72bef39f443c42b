"""The search page, in process: GET / serves the page, the assets are served with sensible
headers, nothing else under /static is reachable, and the script never builds HTML from data."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from search.serve import web


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    app.include_router(web.router)
    return TestClient(app)


def test_page_is_served_with_security_headers(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    html = r.text
    assert '<form id="search-form" role="search"' in html
    assert 'name="viewport"' in html
    # no base tag when the public prefix is unknown: relative URLs resolve against the page's own URL
    assert "<base" not in html and "<!--base-->" not in html


def test_page_uses_only_relative_urls_and_no_inline_code(client):
    html = client.get("/").text
    urls = re.findall(r'(?:src|href|action)="([^"]*)"', html)
    assert urls and "static/app.js" in urls and "static/app.css" in urls
    for url in urls:
        # leading "/" would drop an API Gateway stage prefix; "//" or a scheme would leave the app
        assert not url.startswith("/") and "://" not in url, url
    assert "<script>" not in html and "<style" not in html and " style=" not in html and "onclick" not in html


def test_page_is_the_query_page_for_any_query_string(client):
    r = client.get("/", params={"q": "<script>alert(1)</script>", "section": "games"})
    assert r.status_code == 200
    assert "<script>alert(1)" not in r.text  # the query is never rendered by the server


@pytest.mark.parametrize("name, content_type", sorted(web.ASSETS.items()))
def test_assets_are_served_with_type_and_cache_headers(client, name, content_type):
    r = client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    assert r.content == (web.STATIC_DIR / name).read_bytes()
    assert r.headers["cache-control"] == f"public, max-age={web.ASSET_MAX_AGE_SECONDS}"
    assert r.headers["x-content-type-options"] == "nosniff"
    again = client.get(f"/static/{name}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",
        "/static/../web.py",
        "/static/%2e%2e%2fweb.py",
        "/static/",
        "/static/app.js.map",
        "/static/APP.JS",
    ],
)
def test_nothing_else_is_reachable(client, path):
    assert client.get(path).status_code == 404


def test_stage_prefix_becomes_a_base_href():
    app = FastAPI()
    app.include_router(web.router)
    html = TestClient(app, root_path="/prod").get("/").text
    assert '<base href="/prod/">' in html


@pytest.mark.parametrize(
    "context, expected",
    [
        ({"stage": "prod", "path": "/prod/"}, "/prod/"),
        ({"stage": "prod", "path": "/prod"}, "/prod/"),
        ({"stage": "$default", "path": "/"}, None),
        ({"stage": "prod", "path": "/custom-domain-base/"}, None),  # custom domain: relative URLs suffice
        ({"stage": 'p"><script>', "path": '/p"><script>/'}, '/p"><script>/'),
    ],
)
def test_public_prefix_from_a_rest_api_event(context, expected):
    from starlette.requests import Request

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "headers": [],
        "query_string": b"",
        "aws.event": {"requestContext": context},
    }
    assert web.public_prefix(Request(scope)) == expected


def rest_v1_event(path: str, stage: str) -> dict:
    """A REST API (v1) proxy event as API Gateway sends it: the stage is in requestContext.path only."""
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "GET",
        "isBase64Encoded": False,
        "body": None,
        "headers": {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", "Accept": "text/html"},
        "multiValueHeaders": {"Host": ["abc123.execute-api.eu-west-1.amazonaws.com"], "Accept": ["text/html"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": "GET",
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": "r-1",
            "accountId": "123456789012",
            "apiId": "abc123",
            "identity": {"sourceIp": "127.0.0.1"},
        },
    }


@pytest.mark.parametrize(
    "stage, base", [("prod", '<base href="/prod/">'), ('p"><script>', '<base href="/p&quot;&gt;&lt;script&gt;/">')]
)
def test_rest_api_stage_through_mangum(stage, base):
    from mangum import Mangum

    app = FastAPI()
    app.include_router(web.router)
    response = Mangum(app, lifespan="off")(rest_v1_event("/", stage), None)
    assert response["statusCode"] == 200 and not response["isBase64Encoded"]
    assert base in response["body"] and '"><script>' not in response["body"]
    js = Mangum(app, lifespan="off")(rest_v1_event("/static/app.js", stage), None)
    assert js["statusCode"] == 200 and not js["isBase64Encoded"]  # text, so REST APIs need no binary types


def test_script_never_builds_html_from_strings():
    source = (web.STATIC_DIR / "app.js").read_text(encoding="utf-8")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("on',
        "javascript:",
    ):
        assert sink not in source, sink
    # every fetch is relative (a leading "/" would drop an API Gateway stage prefix)
    fetched = re.findall(r'getJSON\(\s*[`"\']([^`"\']*)', source)
    assert fetched and all(not u.startswith("/") for u in fetched), fetched


def test_app_serves_the_page_before_the_model_is_loaded(tmp_path):
    """The app factory includes the page; it answers without the model or index (a cold start)."""
    from search.serve.app import create_app
    from search.settings import Settings

    app = create_app(Settings.resolve(model_dir=str(tmp_path / "no-model"), index_uri=str(tmp_path / "no-index")))
    client = TestClient(app)  # no lifespan: nothing is loaded
    r = client.get("/")
    assert r.status_code == 200 and 'id="search-form"' in r.text
    assert r.headers["content-security-policy"] == web.CONTENT_SECURITY_POLICY
    assert client.get("/static/app.js").status_code == 200
    missing = client.get("/static/nope.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found" and missing.json()["request_id"]


def test_app_behind_a_rest_api_stage(tmp_path):
    """Through the real app and Mangum: the page under /prod gets <base href="/prod/">."""
    from mangum import Mangum

    from search.serve.app import create_app
    from search.settings import Settings

    app = create_app(Settings.resolve(model_dir=str(tmp_path / "no-model"), index_uri=str(tmp_path / "no-index")))
    handler = Mangum(app, lifespan="off")
    page = handler(rest_v1_event("/", "prod"), None)
    assert page["statusCode"] == 200 and '<base href="/prod/">' in page["body"]
    js = handler(rest_v1_event("/static/app.js", "prod"), None)
    assert js["statusCode"] == 200 and not js["isBase64Encoded"]


def test_assets_are_shipped_in_the_lambda_task_root(tmp_path):
    """The page's files travel with the code into the function (deploy/files.txt, deploy/taskroot.py)."""
    import subprocess
    import sys

    root = web.STATIC_DIR.parents[2]
    subprocess.run(
        [
            sys.executable,
            str(root / "deploy" / "taskroot.py"),
            "code",
            "--target",
            str(tmp_path / "task"),
            "--no-compile",
        ],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in [web.PAGE_FILE, *web.ASSETS]:
        shipped = tmp_path / "task" / "search" / "serve" / "static" / name
        assert shipped.read_bytes() == (web.STATIC_DIR / name).read_bytes(), name
