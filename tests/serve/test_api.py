"""The HTTP API in-process (FastAPI TestClient): shapes, limits, error bodies, determinism, OpenAPI.

On the tiny model (tests/tiny_model.py) over the demo corpus: none of this depends on what the
real model finds; tests/test_readme.py runs the documented examples on the real one."""

import json
import math

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from search.serve.app import create_app
from search.settings import Settings

QUERIES = ["space shooter", "chess engine", "racing car game", "puzzle with blocks", "real-time strategy"]


def make_settings(model_dir, index, tmp, **overrides) -> Settings:
    """Settings from arguments only (env={}), so the developer's environment cannot leak in."""
    return Settings.resolve(
        env={},
        model_dir=str(model_dir),
        index_uri=str(index),
        cache_dir=str(tmp),
        refresh_seconds=0,
        page_in=False,
        **overrides,
    )


def ready_client(app) -> TestClient:
    client = TestClient(app, raise_server_exceptions=False)
    app.state.runtime.load()  # what the lifespan does in the background, done here before the tests
    return client


@pytest.fixture(scope="module")
def app(tiny_model_dir, tiny_index, tmp_path_factory):
    return create_app(make_settings(tiny_model_dir, tiny_index, tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def client(app):
    return ready_client(app)


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "request_id"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert '"input"' not in json.dumps(body) and "Traceback" not in response.text
    return body


# -- search --------------------------------------------------------------------------------------


def test_get_search_shape_and_headers(client):
    r = client.get("/search", params={"q": "space shooter", "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert {"query", "results", "k", "offset", "index", "timing_ms"} <= set(body)
    assert body["query"] == "space shooter" and body["k"] == 3 and body["offset"] == 0
    assert len(body["results"]) == 3
    for hit in body["results"]:
        assert {"id", "score", "title", "fields"} <= set(hit) and set(hit["fields"]) == {
            "section",
            "version",
            "homepage",
        }
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["index"]["count"] == 1108 and body["index"]["version"]
    assert {"embed", "search", "total"} <= set(body["timing_ms"])
    # Server-Timing names the same stages as timing_ms
    stages = [part.split(";")[0].strip() for part in r.headers["server-timing"].split(",")]
    assert stages == list(body["timing_ms"])
    assert r.headers["x-request-id"]


def test_results_are_about_the_query(client):
    r = client.get("/search", params={"q": "real-time strategy game in ancient times", "k": 5})
    assert "0ad" in [h["id"] for h in r.json()["results"]]


def test_post_single_equals_get(client):
    got = client.get("/search", params={"q": "chess engine", "k": 5, "offset": 2}).json()
    posted = client.post("/search", json={"query": "chess engine", "k": 5, "offset": 2}).json()
    assert posted["results"] == got["results"]


def test_batch_answers_equal_single_answers(client):
    batch = client.post("/search", json={"queries": QUERIES, "k": 4}).json()
    assert batch["queries"] == QUERIES and len(batch["results"]) == len(QUERIES)
    for text, results in zip(QUERIES, batch["results"]):
        alone = client.post("/search", json={"query": text, "k": 4}).json()
        assert results == alone["results"], text


def test_same_query_same_results_on_another_instance(client, tiny_model_dir, tiny_index, tmp_path):
    """A second app (its own runtime, model and index, query cache off) answers identically."""
    other = ready_client(create_app(make_settings(tiny_model_dir, tiny_index, tmp_path, query_cache_size=0)))
    for text in QUERIES:
        a = client.get("/search", params={"q": text, "k": 10}).json()["results"]
        b = other.get("/search", params={"q": text, "k": 10}).json()["results"]
        assert a == b and client.get("/search", params={"q": text, "k": 10}).json()["results"] == a
    assert other.app.state.runtime.searcher.cache.hits == 0  # size 0: the cache is off


def test_repeated_query_skips_the_model(client):
    cache = client.app.state.runtime.searcher.cache
    client.get("/search", params={"q": "a quiet fishing game"})
    hits = cache.hits
    client.get("/search", params={"q": "a quiet fishing game", "k": 2})
    assert cache.hits == hits + 1


def test_paging_continues_the_ranking(client):
    first = client.get("/search", params={"q": "card game", "k": 10}).json()["results"]
    page2 = client.get("/search", params={"q": "card game", "k": 5, "offset": 5}).json()["results"]
    assert [h["id"] for h in page2] == [h["id"] for h in first[5:10]]


def test_filters_get_any_of_and_post(client, app):
    versions = [v["value"] for v in client.get("/info").json()["index"]["filters"]["version"][:2]]
    r = client.get("/search", params=[("q", "game"), ("k", "50"), ("version", versions[0]), ("version", versions[1])])
    found = {h["fields"]["version"] for h in r.json()["results"]}
    assert found == set(versions)  # both values matched (any-of), nothing else
    posted = client.post("/search", json={"query": "game", "k": 50, "filter": {"version": versions}}).json()
    assert posted["results"] == r.json()["results"]
    one = client.post("/search", json={"query": "game", "k": 50, "filter": {"version": versions[0]}}).json()
    assert {h["fields"]["version"] for h in one["results"]} == {versions[0]}


def test_unknown_filter_field_is_400(client):
    assert_error(client.get("/search", params={"q": "game", "colour": "red"}), 400, "invalid_query")
    assert_error(client.post("/search", json={"query": "game", "filter": {"colour": ["red"]}}), 400, "invalid_query")


def test_min_score_drops_weak_results(client):
    results = client.get("/search", params={"q": "chess", "k": 20, "min_score": 0.5}).json()["results"]
    assert results and all(h["score"] >= 0.5 for h in results)


# -- limits and error shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "params,loc,kind",
    [
        ({"q": "x" * 1001}, ["query", "q"], "string_too_long"),
        ({"q": ""}, ["query", "q"], "string_too_short"),
        ({}, ["query", "q"], "missing"),
        ({"q": "a", "k": 0}, ["query", "k"], "greater_than_equal"),
        ({"q": "a", "k": 101}, ["query", "k"], "less_than_equal"),
        ({"q": "a", "k": "ten"}, ["query", "k"], "int_parsing"),
        ({"q": "a", "offset": 1001}, ["query", "offset"], "less_than_equal"),
        ({"q": "a", "offset": -1}, ["query", "offset"], "greater_than_equal"),
        ({"q": "a", "min_score": "nan"}, ["query", "min_score"], "finite_number"),
        ({"q": "a", "min_score": 2}, ["query", "min_score"], "less_than_equal"),
        ({"q": "a", "mode": "fuzzy"}, ["query", "mode"], "literal_error"),
    ],
)
def test_get_limits(client, params, loc, kind):
    body = assert_error(client.get("/search", params=params), 422, "invalid_request")
    assert {"loc": loc, "type": kind} in body["error"]["details"]
    for detail in body["error"]["details"]:
        assert set(detail) == {"loc", "type"}  # location and type only: no input, no ctx


def test_limits_at_the_edge_are_accepted(client):
    assert client.get("/search", params={"q": "x" * 1000, "k": 100, "offset": 1000}).status_code == 200
    assert client.post("/search", json={"queries": ["game"] * 32, "k": 1}).status_code == 200


@pytest.mark.parametrize(
    "body,loc,kind",
    [
        ({"queries": ["game"] * 33}, ["body", "queries"], "too_long"),
        ({"queries": []}, ["body", "queries"], "too_short"),
        ({"query": "a", "queries": ["b"]}, ["body"], "query_or_queries"),
        ({"k": 3}, ["body"], "query_or_queries"),
        ({"query": None, "queries": ["a"]}, ["body", "query"], "string_type"),
        ({"query": "a", "k": 101}, ["body", "k"], "less_than_equal"),
        ({"query": "a", "filters": {}}, ["body", "(unknown field)"], "extra_forbidden"),  # the key is not echoed
        ({"query": "a", "filter": {"version": [1]}}, ["body", "filter", "*", 0], "string_type"),  # nor a filter name
        ({"query": "\ud800 lone surrogate"}, ["body", "query"], "string_unicode"),
        ({"query": "a", "min_score": math.inf}, ["body", "min_score"], "finite_number"),
        ({"query": "a", "min_score": False}, ["body", "min_score"], "number_type"),  # found by schemathesis
        ({"query": "a", "k": True}, ["body", "k"], "number_type"),
        ({"query": "a", "offset": False}, ["body", "offset"], "number_type"),
    ],
)
def test_post_limits(client, body, loc, kind):
    raw = json.dumps(body)  # ensure_ascii: the lone surrogate travels as \ud800, like real JSON would
    err = assert_error(
        client.post("/search", content=raw, headers={"content-type": "application/json"}), 422, "invalid_request"
    )
    assert any(d["loc"][: len(loc)] == loc and d["type"] == kind for d in err["error"]["details"]), err


def test_invalid_json_does_not_echo_the_body(client):
    secret = '{"query": "my private search words'
    r = client.post("/search", content=secret, headers={"content-type": "application/json"})
    body = assert_error(r, 422, "invalid_request")
    assert body["error"]["details"][0]["type"] == "json_invalid"
    assert "private" not in r.text


@pytest.mark.parametrize(
    "body",
    [
        '{"query": "caf\xe9 private"}'.encode("latin-1"),  # not UTF-8
        b'{"query": "private", "filter": ' + b"[" * 20000 + b"]" * 20000 + b"}",  # nested too deeply
        b'{"query": "private", "k": ' + b"1" * 5000 + b"}",  # an integer over Python's 4300 digits
    ],
    ids=["latin-1", "deep", "long-int"],
)
def test_a_json_body_python_cannot_parse_is_invalid_json(client, body):
    """A 422 like any invalid JSON, not FastAPI's undocumented 400 "error parsing the body"."""
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    body = assert_error(r, 422, "invalid_request")
    assert body["error"]["details"] == [{"loc": ["body"], "type": "json_invalid"}]
    assert "private" not in r.text


def test_validation_errors_never_echo_the_query(client):
    text = "my private words " * 80  # > 1000 characters
    for r in (client.get("/search", params={"q": text}), client.post("/search", json={"query": text})):
        assert_error(r, 422, "invalid_request")
        assert "private" not in r.text


def test_body_too_large_is_413(client):
    big = json.dumps({"query": "game", "filter": {"version": ["x" * 500] * 200}})  # ~100 KB > 64 KiB
    assert_error(
        client.post("/search", content=big, headers={"content-type": "application/json"}), 413, "body_too_large"
    )


def test_chunked_body_too_large_is_413(client):
    """Without a Content-Length the limit is enforced while reading."""

    def chunks():  # ~100 KB, never finished: the server must stop reading at 64 KiB
        yield b'{"query": "game", "filter": {"version": ['
        for _ in range(200):
            yield b'"' + b"x" * 500 + b'",'

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body_too_large")


def test_blank_query_is_rejected(client):
    body = assert_error(client.get("/search", params={"q": "   "}), 422, "invalid_request")
    assert body["error"]["details"] == [{"loc": ["query", "q"], "type": "string_pattern_mismatch"}]
    body = assert_error(client.post("/search", json={"queries": ["chess", " \t"]}), 422, "invalid_request")
    assert body["error"]["details"] == [{"loc": ["body", "queries", 1], "type": "string_pattern_mismatch"}]
    # a control character Python counts as space but the schema's regex engine may not: still a 4xx
    assert_error(client.get("/search", params={"q": "\x1c"}), 400, "invalid_query")


@pytest.mark.parametrize(
    "query", ["q=%ff%fe", "q=caf%e9", "q=chess&section=%c3", "q=chess&%ff=games", "q=chess&k=1%80"]
)
def test_a_query_string_that_is_not_utf8_is_422(client, query):
    """Starlette decodes such bytes to U+FFFD, which then searched (or filtered) for nothing asked."""
    body = assert_error(client.get(f"/search?{query}"), 422, "invalid_request")
    assert body["error"]["message"] == "invalid request: the query string is not valid UTF-8"
    assert_error(client.get(f"/items/0ad/similar?{query}"), 422, "invalid_request")
    page = client.get(f"/?{query}")  # the search page decodes its own address, as browsers do
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_unknown_route_and_method(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    r = client.delete("/search")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]


def test_request_id_from_a_header_is_kept_when_sane(client):
    r = client.get("/search", params={"q": "x" * 1001}, headers={"x-request-id": "abc-123"})
    assert r.json()["request_id"] == "abc-123" == r.headers["x-request-id"]
    r = client.get("/livez", headers={"x-request-id": "bad id\nwith newline"})
    assert r.headers["x-request-id"] != "bad id\nwith newline" and len(r.headers["x-request-id"]) == 32


def test_settings_change_the_limits_and_the_schema(tiny_model_dir, tiny_index, tmp_path):
    app = create_app(make_settings(tiny_model_dir, tiny_index, tmp_path, max_k=5, max_query_chars=20, max_batch=2))
    client = ready_client(app)
    assert_error(client.get("/search", params={"q": "a", "k": 6}), 422, "invalid_request")
    assert_error(client.get("/search", params={"q": "x" * 21}), 422, "invalid_request")
    assert_error(client.post("/search", json={"queries": ["a", "b", "c"]}), 422, "invalid_request")
    params = {p["name"]: p for p in client.get("/openapi.json").json()["paths"]["/search"]["get"]["parameters"]}
    assert params["k"]["schema"]["maximum"] == 5 and params["q"]["schema"]["maxLength"] == 20


# -- items ----------------------------------------------------------------------------------------


def test_item_and_similar(client):
    item = client.get("/items/0ad").json()
    assert item["id"] == "0ad" and item["title"] and item["text"] and "section" in item["fields"]
    similar = client.get("/items/0ad/similar", params={"k": 5}).json()
    ids = [h["id"] for h in similar["results"]]
    assert len(ids) == 5 and "0ad" not in ids and similar["id"] == "0ad"
    assert "0ad-data" in ids  # its own data package is the nearest thing to it
    scores = [h["score"] for h in similar["results"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_item_is_404(client):
    assert_error(client.get("/items/no-such-package"), 404, "not_found")
    assert_error(client.get("/items/no-such-package/similar"), 404, "not_found")
    assert_error(client.get("/items/0ad/similar", params={"k": 0}), 422, "invalid_request")


# -- health and info ------------------------------------------------------------------------------


def test_livez_readyz_info(client, tiny_model_dir):
    bundle = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["index"]["count"] == 1108
    info = client.get("/info").json()
    assert info["model"]["name"] == bundle["source_model"] and info["model"]["dimension"] == bundle["dimension"]
    assert "quantization" in info["model"]
    assert info["index"]["count"] == 1108 and info["index"]["fields"] == ["section", "version", "homepage"]
    assert info["index"]["version"] == ready.json()["index"]["version"] and info["index"]["built_at"]
    assert info["index"]["filters"]["section"] == [{"value": "games", "count": 1108}]
    assert info["limits"]["max_k"] == 100


def test_not_loaded_answers_503_and_readyz_says_why(tiny_model_dir, tmp_path):
    app = create_app(make_settings(tiny_model_dir, tmp_path / "no-index-here", tmp_path))
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/livez").status_code == 200
    r = client.get("/search", params={"q": "chess"})
    assert_error(r, 503, "not_ready")
    assert r.headers["retry-after"] == "1"
    ready = client.get("/readyz")
    body = assert_error(ready, 503, "not_ready")
    assert body["reason"] == "index_invalid" and body["state"] == "failed"
    assert "no-index-here" not in ready.text  # paths stay in the log (issue 16 item 8)
    assert_error(client.get("/info"), 503, "not_ready")


def test_unexpected_failure_is_500_without_traceback(tiny_model_dir, tiny_index, tmp_path, caplog):
    app = create_app(make_settings(tiny_model_dir, tiny_index, tmp_path))
    client = ready_client(app)
    app.state.runtime.live.current().close()  # a real fault: the index's arrays are gone
    r = client.get("/search", params={"q": "chess"})
    body = assert_error(r, 500, "internal_error")
    assert "Error" not in body["error"]["message"] and "search/" not in r.text
    errors = [
        rec
        for rec in caplog.records
        if rec.levelname == "ERROR" and getattr(rec, "request_id", None) == body["request_id"]
    ]
    assert errors and errors[0].exc_info is not None  # the log has the traceback, the response does not


# -- OpenAPI and docs ---------------------------------------------------------------------------


def test_openapi_and_docs_behind_a_prefix(app):
    client = TestClient(app, root_path="/prod")
    spec = client.get("/openapi.json").json()
    assert spec["servers"] == [{"url": "/prod"}]
    assert {"/search", "/items/{item_id}", "/items/{item_id}/similar", "/livez", "/readyz", "/info"} <= set(
        spec["paths"]
    )
    assert set(spec["paths"]["/search"]) == {"get", "post"}
    assert "/prod/openapi.json" in client.get("/docs").text


@pytest.mark.slow  # schemathesis generates and sends hundreds of requests
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_schema_holds_and_never_5xx(client, mode):
    """Requests generated from /openapi.json (valid ones, then invalid ones) never get a 5xx, and every
    answer (status, content type, body) matches what the schema documents."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        # Left out: "schema-valid request rejected".  Filter field names depend on the loaded index, which
        # a static schema cannot list, so a generated filter on a made-up field is rightly a 400.
        response = case.call()
        if response.status_code == 413:
            # A generated body over SEARCH_MAX_BODY_BYTES is rejected before it is parsed, rightly:
            # 413 is not in schemathesis' list of "rejections", so check the error shape here instead.
            assert response.json()["error"]["code"] == "body_too_large"
            return
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()


# Query text with the characters that break naive code: NUL, RTL/LTR marks and overrides, emoji,
# combining marks, and lone surrogates (valid in JSON escapes, invalid as UTF-8).
NASTY = st.sampled_from(
    [
        "\x00",
        "\u200f",
        "\u202e",
        "\u200e",
        "\U0001f600",
        "\U0001f3ae",
        "\u0301",
        "\ud800",
        "\udfff",
        "\ufeff",
        "\n",
        "\\",
        '"',
        "%",
        "?",
        "&",
    ]
)
QUERY_TEXT = st.lists(st.one_of(NASTY, st.characters()), min_size=0, max_size=40).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=QUERY_TEXT)
def test_any_query_text_is_answered_without_5xx(client, text):
    r = client.post(
        "/search", content=json.dumps({"query": text, "k": 3}), headers={"content-type": "application/json"}
    )
    assert r.status_code in (200, 400, 422), r.text
    if r.status_code == 200:
        assert r.json()["query"] == json.loads(json.dumps(text))  # "\ud800\udfff" in JSON is one character
    elif len(text) > 3:
        assert json.dumps(text)[1:-1] not in r.text  # errors never echo the input
    get_text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # a URL cannot carry surrogates
    r = client.get("/search", params={"q": get_text, "k": 3})
    assert r.status_code in (200, 400, 422), r.text


def test_cors_when_origins_are_configured(tiny_model_dir, tiny_index, tmp_path):
    client = ready_client(
        create_app(make_settings(tiny_model_dir, tiny_index, tmp_path, cors_origins="https://shop.example"))
    )
    preflight = client.options(
        "/search",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    r = client.get("/search", params={"q": "chess", "k": 1}, headers={"Origin": "https://shop.example"})
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert "server-timing" in r.headers["access-control-expose-headers"]
    other = client.get("/livez", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# -- issue 16 item 9: friendlier requests ----------------------------------------------------------


def test_post_json_without_content_type_is_accepted(client):
    body = json.dumps({"query": "space shooter", "k": 3}).encode()
    expected = client.post("/search", json={"query": "space shooter", "k": 3}).json()["results"]
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}):  # none; what curl -d sends
        r = client.post("/search", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["results"] == expected
    r = client.post("/search", content=b"query=chess", headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error(r, 422, "invalid_request")
    assert_error(client.post("/search", content=b"[1, 2]"), 422, "invalid_request")


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_head_on_health_routes(client, path):
    r = client.head(path)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("application/json")


def test_wrong_method_lists_every_allowed_one(client):
    r = client.delete("/search")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d\ufeff", "\x01\x02", "\u2060 \x7f"])
def test_query_of_only_control_or_zero_width_characters_is_400(client, text):
    assert_error(client.get("/search", params={"q": text}), 400, "invalid_query")
    assert_error(client.post("/search", json={"query": text}), 400, "invalid_query")
    assert_error(client.post("/search", json={"queries": ["chess", text]}), 400, "invalid_query")


# -- issue 16 item 8: nothing exposed on public routes ---------------------------------------------


def test_info_has_no_versions_unless_asked(client, tiny_model_dir, tiny_index, tmp_path):
    assert "versions" not in client.get("/info").json()
    shown = ready_client(create_app(make_settings(tiny_model_dir, tiny_index, tmp_path, info_versions=True)))
    assert shown.get("/info").json()["versions"]["onnxruntime"]


def test_docs_load_nothing_from_another_host(client):
    import re

    redoc = client.get("/redoc", follow_redirects=False)
    assert redoc.status_code == 307 and redoc.headers["location"] == "/docs"
    for page in ("/docs",):
        r = client.get(page)
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "http" not in csp
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", r.text) + re.findall(r"url: ?'([^']+)'", r.text)
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert "cdn." not in r.text and "fonts.googleapis" not in r.text and "tiangolo.com" not in r.text
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and asset.content, url
        # every inline script is allowed by its hash, and only those
        import base64
        import hashlib

        for script in re.findall(r"<script>(.*?)</script>", r.text, flags=re.S):
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp


def test_json_responses_say_nosniff_and_how_to_cache(client):
    for r in (
        client.get("/search", params={"q": "chess"}),
        client.get("/items/0ad"),
        client.get("/readyz"),
        client.get("/info"),
        client.get("/search", params={"q": "x", "k": 0}),  # an error
        client.get("/nothing"),
        client.get("/openapi.json"),
    ):
        assert r.headers["content-type"].startswith("application/json"), r.url
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["cache-control"], r.url


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"method": "POST", "url": "/search", "json": {"query": "chess", "secret-key-xyz": 1}},
        {"method": "POST", "url": "/search", "json": {"query": "chess", "filter": {"secret-key-xyz": ["a"]}}},
        {"method": "POST", "url": "/search", "json": {"query": "chess", "filter": {"secret-key-xyz": 5}}},
        {"method": "GET", "url": "/search", "params": {"q": "chess", "secret-key-xyz": "a"}},
        {"method": "GET", "url": "/items/0ad/similar", "params": {"secret-key-xyz": "a"}},
    ],
)
def test_errors_do_not_echo_unknown_keys_or_filter_names(client, request_kwargs):
    r = client.request(**request_kwargs)
    assert r.status_code in (400, 422), r.text
    assert "secret-key-xyz" not in r.text
    assert "unknown field" in r.json()["error"]["message"] or r.json()["error"]["code"] == "invalid_request"


def test_the_sentence_share_setting_reaches_hybrid_ranking(tiny_model_dir, tiny_index, tmp_path):
    """SEARCH_HYBRID_SENTENCE_SHARE=0: a sentence's hybrid score is its cosine alone (the keyword
    side still proposes candidates); keyword-style queries keep their keyword weight."""
    sentence = "a game where you build and run your own city"
    plain = ready_client(create_app(make_settings(tiny_model_dir, tiny_index, tmp_path, hybrid_sentence_share=0.0)))
    assert plain.app.state.runtime.searcher.sentence_share == 0.0
    hybrid = plain.get("/search", params={"q": sentence, "k": 5, "mode": "hybrid"}).json()["results"]
    semantic = {
        r["id"]: r["score"]
        for r in plain.get("/search", params={"q": sentence, "k": 50, "mode": "semantic"}).json()["results"]
    }
    assert hybrid and all(
        r["score"] == pytest.approx(semantic[r["id"]], abs=1e-5) for r in hybrid if r["id"] in semantic
    )
    default = ready_client(create_app(make_settings(tiny_model_dir, tiny_index, tmp_path)))
    with_keywords = default.get("/search", params={"q": sentence, "k": 5, "mode": "hybrid"}).json()["results"]
    assert any("keyword" in r["signals"] for r in with_keywords)
    assert [r["score"] for r in with_keywords] != [r["score"] for r in hybrid]
    terse = {"q": "chess", "k": 5, "mode": "hybrid"}
    assert (
        plain.get("/search", params=terse).json()["results"] == default.get("/search", params=terse).json()["results"]
    )
