"""``handler.handler`` with the events in events/ and variations: HTTP payloads, warmups, stage prefixes,
duplicate headers, unsupported events, metrics and logs.  Contexts are awslambdaric's real LambdaContext."""

import base64
import copy
import json
import logging
import time

import pytest
from aws_lambda_powertools.metrics.provider import cold_start

import handler
from search.model.encoder import Encoder
from search.serve import lambda_events, observability, runtime
from search.serve.runtime import Runtime
from search.settings import Settings
from tests.conftest import ROOT

EVENTS = ROOT / "events"
FUNCTION_NAME = "search-test"

# What each event in events/ must produce: ("http", status, query) | ("html",) | ("warm",) | ("unsupported",)
EXPECTED = {
    "http-api-get-search.json": ("http", 200, "space shooter"),
    "http-api-post-search.json": ("http", 200, "space shooter"),
    "http-api-bad-request.json": ("http", 422, None),
    "rest-api-search-stage.json": ("http", 200, "puzzle game"),
    "rest-api-docs-stage.json": ("html",),
    "function-url-search.json": ("http", 200, "chess"),
    "alb-search.json": ("http", 200, "racing game"),
    "warmup.json": ("warm",),
    "warmup-eventbridge.json": ("warm",),
    "s3-put-unsupported.json": ("unsupported",),
}


def event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def lambda_settings(model_dir, index, cache, **overrides) -> Settings:
    """What handler.lambda_settings() gives in Lambda (searches inline), pointed at the test files."""
    overrides = {"cpu_workers": 0, "refresh_seconds": 0, **overrides}
    return Settings.resolve(env={}, model_dir=str(model_dir), index_uri=str(index), cache_dir=str(cache), **overrides)


@pytest.fixture()
def context(monkeypatch):
    from awslambdaric.lambda_context import LambdaContext

    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", FUNCTION_NAME)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
    return LambdaContext(
        "8f5a1c2e-1111-4c9b-8d7e-0123456789ab",
        None,
        None,
        int(time.time() * 1000) + 30_000,
        f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION_NAME}",
    )


@pytest.fixture(scope="module")
def shared_runtime(tiny_model_dir, tiny_index, tmp_path_factory):
    """One 'execution environment' for most tests (the tiny model: event handling does not depend on it);
    tests that need a cold one install their own."""
    rt = Runtime(lambda_settings(tiny_model_dir, tiny_index, tmp_path_factory.mktemp("cache")))
    old = runtime.set_runtime(rt)
    yield rt
    runtime.set_runtime(old)


@pytest.fixture()
def env(shared_runtime):
    runtime.set_runtime(shared_runtime)
    return shared_runtime


@pytest.fixture()
def fresh(tiny_model_dir, tiny_index, tmp_path, shared_runtime):
    """A new execution environment: nothing loaded, no invocation seen."""

    def make(**overrides):
        rt = Runtime(lambda_settings(tiny_model_dir, overrides.pop("index", tiny_index), tmp_path, **overrides))
        runtime.set_runtime(rt)
        return rt

    yield make
    runtime.set_runtime(shared_runtime)


def body_of(response: dict):
    raw = response["body"]
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


def header(response: dict, name: str) -> str | None:
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name:
            return value
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name:
            return ", ".join(values)
    return None


# -- every event in events/ ---------------------------------------------------------------------


def test_every_event_file_is_covered():
    assert sorted(p.name for p in EVENTS.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_event(name, env, context):
    kind, *rest = EXPECTED[name]
    ev = event(name)
    response = handler.handler(ev, context)
    if kind == "warm":
        assert response["warm"] is True and response["index"]["count"] == 1108
        assert {"load", "refresh", "embed", "total"} <= set(response["timings_ms"])
        return
    if kind == "unsupported":
        assert response == {"error": {"code": "unsupported_event", "message": response["error"]["message"]}}
        assert "HTTP" in response["error"]["message"]
        return
    assert response["isBase64Encoded"] is False  # JSON and HTML go back as text
    if "resource" in ev and "version" not in ev:  # REST API v1 answers with multiValueHeaders too
        assert "multiValueHeaders" in response
    if ev.get("version") == "2.0":
        assert "multiValueHeaders" not in response
    if kind == "html":
        assert response["statusCode"] == 200 and header(response, "content-type").startswith("text/html")
        return
    status, query = rest
    assert response["statusCode"] == status
    assert header(response, "content-type") == "application/json"
    wanted_id = lambda_events.request_id(ev)
    assert header(response, "x-request-id") == wanted_id and wanted_id
    body = body_of(response)
    if status == 200:
        assert body["query"] == query and body["results"] and body["index"]["count"] == 1108
        assert header(response, "server-timing").startswith("queue;dur=")
    else:
        assert body["error"]["code"] == "invalid_request" and body["request_id"] == wanted_id
        assert all(set(d) == {"loc", "type"} for d in body["error"]["details"])


def test_get_and_base64_post_give_identical_results(env, context):
    got = body_of(handler.handler(event("http-api-get-search.json"), context))
    posted = body_of(handler.handler(event("http-api-post-search.json"), context))
    assert got["results"] == posted["results"] and len(got["results"]) == 3


def test_same_answer_as_the_local_server(env, context):
    from fastapi.testclient import TestClient

    from search.serve.app import create_app

    local = TestClient(create_app(runtime=env)).get("/search", params={"q": "chess", "k": 2}).json()
    via_lambda = body_of(handler.handler(event("function-url-search.json"), context))
    assert local["results"] == via_lambda["results"]


# -- warmup and loading once -------------------------------------------------------------------


def test_warmup_before_the_first_request(fresh, context):
    rt = fresh()
    loads = Encoder.loads
    first = handler.handler(event("warmup-eventbridge.json"), context)
    assert first["warm"] is True and first["cold_start"] is True and rt.ready
    assert {"load", "refresh", "page_in", "embed", "total"} <= set(first["timings_ms"])
    assert Encoder.loads == loads + 1
    assert handler.handler(event("http-api-get-search.json"), context)["statusCode"] == 200
    again = handler.handler(event("warmup.json"), context)
    assert again["warm"] is True and again["cold_start"] is False
    assert Encoder.loads == loads + 1


def test_warmup_after_the_first_request(fresh, context):
    rt = fresh()
    assert not rt.ready
    assert handler.handler(event("function-url-search.json"), context)["statusCode"] == 200  # loads lazily
    warm = handler.handler(event("warmup.json"), context)
    assert warm["warm"] is True and warm["cold_start"] is False


def test_model_and_index_load_once_across_invocations(fresh, context):
    rt = fresh()
    loads = Encoder.loads
    for _ in range(3):
        for name in sorted(EXPECTED):
            handler.handler(event(name), context)
    assert Encoder.loads == loads + 1 and rt.invocations == 3 * len(EXPECTED)


def test_failed_load_answers_503_and_warmup_says_why(fresh, context, tmp_path):
    fresh(index=tmp_path / "missing-index")
    warm = handler.handler(event("warmup.json"), context)
    assert warm["warm"] is False and warm["error"]["code"] == "not_ready"
    assert "missing-index" in warm["error"]["message"]
    response = handler.handler(event("http-api-get-search.json"), context)
    assert response["statusCode"] == 503 and body_of(response)["error"]["code"] == "not_ready"
    ready = copy.deepcopy(event("http-api-get-search.json"))
    ready["rawPath"] = ready["requestContext"]["http"]["path"] = "/readyz"
    ready["rawQueryString"] = ""
    body = body_of(handler.handler(ready, context))
    assert body["state"] == "failed" and body["reason"] == "index_invalid"
    assert "missing-index" not in json.dumps(body)  # public: a reason code; the path is in the log


# -- stage prefixes ----------------------------------------------------------------------------


def test_rest_api_stage_prefix_for_docs_and_openapi(env, context):
    docs = handler.handler(event("rest-api-docs-stage.json"), context)
    assert "/prod/openapi.json" in docs["body"]
    spec_event = event("rest-api-docs-stage.json")
    spec_event["path"], spec_event["requestContext"]["path"] = "/openapi.json", "/prod/openapi.json"
    spec = body_of(handler.handler(spec_event, context))
    assert spec["servers"] == [{"url": "/prod"}] and "/search" in spec["paths"]


def test_http_api_named_stage(env, context):
    base = event("http-api-get-search.json")
    staged = copy.deepcopy(base)
    staged["requestContext"]["stage"] = "prod"
    staged["rawPath"] = staged["requestContext"]["http"]["path"] = "/prod/search"
    a, b = handler.handler(base, context), handler.handler(staged, context)
    assert b["statusCode"] == 200 and body_of(a)["results"] == body_of(b)["results"]
    staged["rawPath"] = staged["requestContext"]["http"]["path"] = "/prod/docs"
    staged["rawQueryString"] = ""
    assert "/prod/openapi.json" in handler.handler(staged, context)["body"]


def test_base_path_setting_for_a_custom_domain_mapping(fresh, context):
    fresh(base_path="/api")
    ev = event("http-api-get-search.json")
    ev["rawPath"] = ev["requestContext"]["http"]["path"] = "/api/search"
    assert handler.handler(ev, context)["statusCode"] == 200
    ev["rawPath"] = ev["requestContext"]["http"]["path"] = "/api/docs"
    ev["rawQueryString"] = ""
    assert "/api/openapi.json" in handler.handler(ev, context)["body"]


# -- duplicate headers, cookies, multi-value query strings ---------------------------------------


def test_duplicate_headers_and_cookies_v1(env, context):
    with_dupes = event("rest-api-search-stage.json")
    assert len(with_dupes["multiValueHeaders"]["Cookie"]) == 2
    plain = copy.deepcopy(with_dupes)
    for key in ("Cookie", "X-Forwarded-For"):
        plain["headers"].pop(key)
        plain["multiValueHeaders"].pop(key)
    a, b = handler.handler(with_dupes, context), handler.handler(plain, context)
    assert a["statusCode"] == b["statusCode"] == 200 and body_of(a)["results"] == body_of(b)["results"]


def test_cookies_v2(env, context):
    with_cookies = event("http-api-get-search.json")
    assert with_cookies["cookies"]
    plain = copy.deepcopy(with_cookies)
    plain.pop("cookies")
    a, b = handler.handler(with_cookies, context), handler.handler(plain, context)
    assert a["statusCode"] == 200 and body_of(a)["results"] == body_of(b)["results"]


def two_versions(rt: Runtime) -> list[str]:
    rt.load()
    index = rt.live.current()
    return [value for value, _count in index.metadata.field_values("version", limit=2)]


def test_repeated_query_parameters_filter_any_of(env, context):
    versions = two_versions(env)
    v1 = event("rest-api-search-stage.json")
    v1["multiValueQueryStringParameters"] = {"q": ["game"], "k": ["50"], "version": versions}
    v1["queryStringParameters"] = {"q": "game", "k": "50", "version": versions[-1]}
    found_v1 = {h["fields"]["version"] for h in body_of(handler.handler(v1, context))["results"]}
    assert found_v1 == set(versions)
    from urllib.parse import urlencode

    v2 = event("http-api-get-search.json")
    v2["rawQueryString"] = urlencode([("q", "game"), ("k", "50"), *[("version", v) for v in versions]])
    v2["queryStringParameters"] = {"q": "game", "k": "50", "version": ",".join(versions)}
    assert {h["fields"]["version"] for h in body_of(handler.handler(v2, context))["results"]} == set(versions)


# -- events that are not requests --------------------------------------------------------------


@pytest.mark.parametrize("bad", [[], "hello", None, 42, {"Records": []}, {"detail-type": "Other", "source": "x"}])
def test_other_events_get_a_clear_error(env, context, bad):
    response = handler.handler(bad, context)
    assert response["error"]["code"] == "unsupported_event"


def test_malformed_http_event_is_a_400_not_a_crash(env, context):
    response = handler.handler({"version": "2.0", "requestContext": {"requestId": "r-1"}}, context)
    assert response["statusCode"] == 400 and body_of(response)["error"]["code"] == "bad_event"


def test_direct_call_without_a_context(env):
    assert handler.handler({"warmup": True})["warm"] is True


# -- metrics and logs --------------------------------------------------------------------------


def emf(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def metric_values(blobs: list[dict]) -> dict:
    values = {}
    for blob in blobs:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == observability.NAMESPACE
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                values[metric["Name"]] = value[-1] if isinstance(value, list) else value
    return values


def test_metrics_per_request(env, context, capsys):
    handler.handler(event("http-api-get-search.json"), context)
    values = metric_values(emf(capsys.readouterr().out))
    assert {"EmbedLatency", "SearchLatency", "QueueLatency", "RequestLatency"} <= set(values)
    assert values["Results"] == 3 and values["Queries"] == 1
    assert values["Http4xx"] == 0 and values["Http5xx"] == 0
    handler.handler(event("http-api-bad-request.json"), context)
    values = metric_values(emf(capsys.readouterr().out))
    assert values["Http4xx"] == 1 and values["Http5xx"] == 0
    handler.handler(event("warmup.json"), context)
    assert metric_values(emf(capsys.readouterr().out))["Warmup"] == 1


def test_cold_start_metric(env, context, capsys):
    cold_start.is_cold_start = True  # as in a new execution environment
    handler.handler(event("warmup.json"), context)
    blobs = emf(capsys.readouterr().out)
    cold = [b for b in blobs if "ColdStart" in b]
    assert cold and cold[0]["function_name"] == FUNCTION_NAME
    handler.handler(event("warmup.json"), context)
    assert not [b for b in emf(capsys.readouterr().out) if "ColdStart" in b]


def test_5xx_is_counted_and_has_no_traceback(fresh, context, capsys):
    rt = fresh()
    rt.load()
    rt.live.current().close()  # a real fault inside the search
    response = handler.handler(event("function-url-search.json"), context)
    assert response["statusCode"] == 500
    body = body_of(response)
    assert body["error"]["code"] == "internal_error" and body["request_id"] == "7d1b1f2c-4b1e-4e0b-9c3e-2f6a1c8b9d01"
    assert "Traceback" not in response["body"]
    assert metric_values(emf(capsys.readouterr().out))["Http5xx"] == 1


def test_logs_carry_the_request_id_and_not_the_query(env, context, caplog):
    caplog.set_level(logging.INFO, logger=observability.SERVICE)
    handler.handler(event("http-api-get-search.json"), context)
    formatted = [json.loads(observability.logger.registered_formatter.format(r)) for r in caplog.records]
    requests = [r for r in formatted if r["message"] == "request"]
    assert requests and requests[-1]["correlation_id"] == "JKJaXmPLvHcESHA="
    assert requests[-1]["status"] == 200 and requests[-1]["results"] == 3
    for record in formatted:
        assert "space shooter" not in json.dumps(record)  # INFO never has the query text


def test_lambda_runs_searches_inline_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("SEARCH_CPU_WORKERS", raising=False)
    assert handler.lambda_settings().cpu_workers == 0
    monkeypatch.setenv("SEARCH_CPU_WORKERS", "2")
    assert handler.lambda_settings().cpu_workers == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_search_inline_or_on_the_executor_gives_the_same_answer(fresh, context, workers):
    rt = fresh(cpu_workers=workers)
    ev = event("http-api-get-search.json")
    response = handler.handler(ev, context)
    assert response["statusCode"] == 200 and body_of(response)["results"]
    assert (rt._executor is None) == (workers == 0)  # inline: no executor thread was started for it
    runtime.set_runtime(
        Runtime(
            lambda_settings(
                rt.settings.model_dir, rt.settings.index_uri, rt.settings.cache_dir, cpu_workers=1 - workers
            )
        )
    )
    other = handler.handler(ev, context)
    assert body_of(other)["results"] == body_of(response)["results"]


# -- issue 16 item 9: events from elsewhere --------------------------------------------------------

LAMBDA_AT_EDGE = {
    "Records": [
        {
            "cf": {
                "config": {"distributionId": "EDFDVBD6EXAMPLE", "eventType": "viewer-request", "requestId": "r-1"},
                "request": {
                    "clientIp": "203.0.113.178",
                    "headers": {},
                    "method": "GET",
                    "querystring": "q=chess",
                    "uri": "/search",
                },
            }
        }
    ]
}
LATTICE_V2 = {
    "version": "2.0",
    "path": "/search",
    "method": "GET",
    "headers": {"host": ["x.vpc-lattice-svcs.us-east-1.on.aws"]},
    "queryStringParameters": {"q": "chess"},
    "body": "",
    "isBase64Encoded": False,
    "requestContext": {
        "serviceNetworkArn": "arn:aws:vpc-lattice:us-east-1:123456789012:servicenetwork/sn-0bf3f2882e9cc805a",
        "serviceArn": "arn:aws:vpc-lattice:us-east-1:123456789012:service/svc-0a40eebed65f8d69c",
        "targetGroupArn": "arn:aws:vpc-lattice:us-east-1:123456789012:targetgroup/tg-6d0ecf831eec9f09",
        "identity": {"sourceVpcArn": "arn:aws:ec2:region:123456789012:vpc/vpc-0b8276c84697e7339"},
        "region": "us-east-1",
        "timeEpoch": "1696331543569073",
    },
}
LATTICE_V1 = {
    "raw_path": "/search?q=chess",
    "method": "GET",
    "headers": {"host": "x.vpc-lattice-svcs.us-east-1.on.aws"},
    "query_string_parameters": {"q": "chess"},
    "body": "",
    "is_base64_encoded": False,
}


@pytest.mark.parametrize("other", [LAMBDA_AT_EDGE, LATTICE_V2, LATTICE_V1], ids=["edge", "lattice-v2", "lattice-v1"])
def test_edge_and_lattice_events_are_unsupported_quietly(env, context, other, caplog):
    caplog.set_level(logging.INFO, logger=observability.SERVICE)
    response = handler.handler(copy.deepcopy(other), context)
    assert response["error"]["code"] == "unsupported_event"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_rest_event_with_a_version_key_keeps_its_stage_prefix(env, context):
    docs = event("rest-api-docs-stage.json")
    docs["version"] = "1.0"  # some tools add it to REST (v1) events too
    assert "/prod/openapi.json" in handler.handler(docs, context)["body"]


def test_access_log_line_for_a_lone_surrogate_path(env, context, caplog):
    caplog.set_level(logging.INFO, logger=observability.SERVICE)
    odd = event("http-api-get-search.json")
    odd["rawPath"] = odd["requestContext"]["http"]["path"] = "/items/a\ud800b"
    odd["rawQueryString"], odd["queryStringParameters"] = "", {}
    response = handler.handler(odd, context)
    assert response["statusCode"] in (404, 422)
    lines = [observability.logger.registered_formatter.format(r) for r in caplog.records]
    for line in lines:
        line.encode("utf-8")  # what the handler's stream does with it: a lone surrogate raised here
    requests = [json.loads(line) for line in lines if json.loads(line)["message"] == "request"]
    assert requests and requests[-1]["path"] == "/items/a\\ud800b", requests
