"""template.yaml, checked without AWS (the Dockerfile: test_dockerfile.py; the task root: test_taskroot.py).

cfn-lint and `sam validate --lint` (the SAM CLI lives in .venv-sam, `make sam`) must pass; then
the template is read as data and held to the rules that matter for a public endpoint: a timeout
under API Gateway's 29 s, no IAM wildcard, S3 read access to the index prefix only, a warmup
schedule, SnapStart on the zip variant only, and a route for every route the app serves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SAM = ROOT / ".venv-sam" / "bin" / "sam"
API_GATEWAY_TIMEOUT_SECONDS = 29
FUNCTIONS = ("SearchImageFunction", "SearchZipFunction")
# Swagger UI's OAuth2 helper page: the API has no auth, so the gateway does not route it.
APP_ROUTES_NOT_EXPOSED = {("GET", "/docs/oauth2-redirect")}


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, !If ...) read as their long form."""


def _tag(loader: CfnLoader, suffix: str, node):
    name = "Ref" if suffix == "Ref" else "Condition" if suffix == "Condition" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


@lru_cache(maxsize=1)
def _load() -> str:
    return TEMPLATE.read_text()


def load_template() -> dict:
    return yaml.load(_load(), Loader=CfnLoader)


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template()


def walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def statements(template) -> list[dict]:
    """IAM statements of the search function's resources (the build pipeline's, behind
    EnableBuildPipeline, are held to their own rules in test_build_pipeline.py)."""
    search = {k: r for k, r in template["Resources"].items() if r.get("Condition") != "BuildPipelineOn"}
    return [s for node in walk(search) if isinstance(node, dict) and "Statement" in node for s in node["Statement"]]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------ linters


@pytest.mark.slow  # cfn-lint loads every resource schema: several seconds
def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")  # pinned in requirements-dev.txt
    done = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow  # the SAM CLI takes several seconds to start
def test_sam_validate_lint_passes_offline():
    """`sam validate --lint` needs no AWS account: run it with no AWS settings at all."""
    if not SAM.exists():
        pytest.fail("the SAM CLI is missing: run `make sam` (make test does it)", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["SAM_CLI_TELEMETRY"] = "0"
    done = subprocess.run(
        [str(SAM), "validate", "--lint", "--template", str(TEMPLATE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


# ------------------------------------------------------------------ the function


def test_timeout_is_under_api_gateways_limit(template):
    timeout = template["Parameters"]["Timeout"]
    assert int(timeout["Default"]) < API_GATEWAY_TIMEOUT_SECONDS
    assert int(timeout["MaxValue"]) < API_GATEWAY_TIMEOUT_SECONDS
    assert template["Globals"]["Function"]["Timeout"] == {"Ref": "Timeout"}
    for name in FUNCTIONS:
        assert "Timeout" not in template["Resources"][name]["Properties"], f"{name} overrides the timeout"


def test_function_settings(template):
    glob = template["Globals"]["Function"]
    assert template["Parameters"]["MemorySize"]["Default"] == 2048 and glob["MemorySize"] == {"Ref": "MemorySize"}
    assert glob["Tracing"] == "Active"
    assert glob["ReservedConcurrentExecutions"]["Fn::If"][0] == "HasReservedConcurrency"
    env = glob["Environment"]["Variables"]
    for var in (
        "SEARCH_INDEX_URI",
        "SEARCH_CACHE_DIR",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
    ):
        assert var in env, var
    for name, model_dir in (("SearchImageFunction", "/var/task/model"), ("SearchZipFunction", "/opt/model")):
        assert template["Resources"][name]["Properties"]["Environment"]["Variables"]["SEARCH_MODEL_DIR"] == model_dir
    logs = template["Resources"]["FunctionLogGroup"]["Properties"]
    assert logs["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert glob["LoggingConfig"]["LogGroup"] == {"Ref": "FunctionLogGroup"}


def test_image_function_is_built_from_the_dockerfile(template):
    image = template["Resources"]["SearchImageFunction"]
    assert image["Properties"]["PackageType"] == "Image"
    assert image["Metadata"]["Dockerfile"] == "Dockerfile" and image["Metadata"]["DockerContext"] == "."
    assert image["Metadata"]["DockerTag"]


# ------------------------------------------------------------------ permissions


def test_no_iam_wildcards(template):
    found = statements(template)
    assert found, "no IAM statements found: the test would pass vacuously"
    for stmt in found:
        for action in as_list(stmt["Action"]):
            assert "*" not in action, f"wildcard action {action!r} in {stmt.get('Sid')}"
        if "Principal" in stmt:  # the role's trust policy: only Lambda may assume it
            assert stmt["Principal"] == {"Service": "lambda.amazonaws.com"}, stmt
            continue
        for resource in as_list(stmt["Resource"]):
            text = json.dumps(resource)
            assert resource != "*" and not re.search(r':::?\*"|/\*"|^"\*"$', text), (
                f"wildcard resource {text} in {stmt.get('Sid')}"
            )
        assert stmt["Effect"] == "Allow"
    role = template["Resources"]["FunctionRole"]["Properties"]
    managed = [json.dumps(arn) for arn in role["ManagedPolicyArns"]]
    assert len(managed) == 2 and "AWSXRayDaemonWriteAccess" in managed[0], managed
    assert "UseEfs" in managed[1] and "AWSLambdaVPCAccessExecutionRole" in managed[1], managed
    for name in FUNCTIONS:
        props = template["Resources"][name]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]} and "Policies" not in props


def test_s3_access_is_limited_to_the_index_prefix(template):
    s3 = [s for s in statements(template) if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    actions = sorted(a for s in s3 for a in as_list(s["Action"]))
    assert actions == ["s3:GetObject", "s3:ListBucket"], actions
    for stmt in s3:
        (action,) = as_list(stmt["Action"])
        if action == "s3:GetObject":
            assert stmt["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${IndexBucket}/${IndexPrefix}*"}
        else:
            assert stmt["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${IndexBucket}"}
            assert stmt["Condition"] == {"StringLike": {"s3:prefix": [{"Fn::Sub": "${IndexPrefix}*"}]}}
    # The prefix itself cannot widen the grant: no wildcard, no empty prefix, ends with "/".
    pattern = re.compile(template["Parameters"]["IndexPrefix"]["AllowedPattern"])
    assert pattern.fullmatch(template["Parameters"]["IndexPrefix"]["Default"])
    for ok in ("games/", "catalogue/v2/"):
        assert pattern.fullmatch(ok), ok
    for bad in ("", "*", "games", "games/*", "a/*/", "/games/"):
        assert not pattern.fullmatch(bad), bad
    # The URI the function reads is built from the same two parameters.
    uri = template["Globals"]["Function"]["Environment"]["Variables"]["SEARCH_INDEX_URI"]
    assert uri == {"Fn::If": ["UseS3", {"Fn::Sub": "s3://${IndexBucket}/${IndexPrefix}"}, {"Ref": "IndexPath"}]}


def test_efs_is_optional_and_nothing_is_opened_to_the_world(template):
    image = template["Resources"]["SearchImageFunction"]["Properties"]
    assert image["FileSystemConfigs"]["Fn::If"][0] == "UseEfs"
    assert image["VpcConfig"]["Fn::If"][0] == "UseEfs"
    assert "FileSystemConfigs" not in template["Resources"]["SearchZipFunction"]["Properties"]
    types = {r["Type"] for r in template["Resources"].values()}
    assert not types & {"AWS::EC2::SecurityGroup", "AWS::EC2::SecurityGroupIngress"}
    assert "0.0.0.0/0" not in _load() and "::/0" not in _load()
    assert "SnapStartHasNoEfs" in template["Rules"]


# ------------------------------------------------------------------ warmup, SnapStart, routes


def test_warmup_schedule_on_every_function(template):
    for name in FUNCTIONS:
        events = template["Resources"][name]["Properties"]["Events"]
        schedules = [e for e in events.values() if e["Type"] == "Schedule"]
        assert len(schedules) == 1, name
        props = schedules[0]["Properties"]
        assert props["Schedule"] == {"Ref": "WarmupSchedule"}
        assert props["State"] == {"Fn::If": ["WarmupOn", "ENABLED", "DISABLED"]}
        assert "Input" not in props, "the handler answers EventBridge's own Scheduled Event"
    param = template["Parameters"]["WarmupSchedule"]
    pattern = re.compile(param["AllowedPattern"])
    assert pattern.fullmatch(param["Default"])
    assert pattern.fullmatch("rate(1 minute)") and not pattern.fullmatch("rate(1 minutes )")
    scheduled = json.loads((ROOT / "events" / "warmup-eventbridge.json").read_text())
    assert scheduled["source"] == "aws.events" and scheduled["detail-type"] == "Scheduled Event"


def test_snapstart_only_on_the_zip_variant(template):
    resources = template["Resources"]
    zip_fn = resources["SearchZipFunction"]
    assert zip_fn["Condition"] == "IsZip"
    assert zip_fn["Properties"]["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert zip_fn["Properties"]["Runtime"] == "python3.12"
    assert zip_fn["Properties"]["Layers"] == [{"Ref": "RuntimeLayer"}, {"Ref": "ModelLayer"}]
    assert template["Globals"]["Function"]["AutoPublishAlias"], "SnapStart works on published versions"
    assert resources["SearchImageFunction"]["Condition"] == "IsImage"
    assert "SnapStart" not in template["Globals"]["Function"]
    snapstart = [name for name, r in resources.items() if "SnapStart" in (r.get("Properties") or {})]
    assert snapstart == ["SearchZipFunction"], snapstart
    for layer in ("RuntimeLayer", "ModelLayer"):
        assert resources[layer]["Condition"] == "IsZip"
        assert resources[layer]["Metadata"]["BuildMethod"] == "makefile"
        content = ROOT / resources[layer]["Properties"]["ContentUri"] / "Makefile"
        assert f"build-{layer}:" in content.read_text(), content
    code = ROOT / zip_fn["Properties"]["CodeUri"] / "Makefile"
    assert "build-SearchZipFunction:" in code.read_text()


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the FastAPI app serves (path parameters as {})."""
    from search.serve.app import create_app

    def walk_routes(routes):
        for route in routes:
            if hasattr(route, "original_router"):  # an included router
                yield from walk_routes(route.original_router.routes)
            elif hasattr(route, "routes") and not hasattr(route, "methods"):
                yield from walk_routes(route.routes)
            elif getattr(route, "methods", None):
                for method in route.methods - {"HEAD"}:
                    yield method, re.sub(r"\{[^}]+\}", "{}", route.path)

    return set(walk_routes(create_app().routes)) - APP_ROUTES_NOT_EXPOSED


def test_every_route_of_the_app_is_routed(template):
    wanted = app_routes()
    expected = {
        ("GET", "/search"),
        ("POST", "/search"),
        ("GET", "/items/{}"),
        ("GET", "/items/{}/similar"),
        ("GET", "/livez"),
        ("GET", "/readyz"),
        ("GET", "/info"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/"),
    }
    assert expected <= wanted, f"the app lacks {expected - wanted}"
    api_of = {"SearchImageFunction": "ImageApi", "SearchZipFunction": "ZipApi"}
    for name in FUNCTIONS:
        events = template["Resources"][name]["Properties"]["Events"].values()
        routed = {
            (e["Properties"]["Method"], re.sub(r"\{[^}]+\}", "{}", e["Properties"]["Path"]))
            for e in events
            if e["Type"] == "HttpApi"
        }
        assert routed == wanted, f"{name}: missing {wanted - routed}, extra {routed - wanted}"
        assert {e["Properties"]["ApiId"]["Ref"] for e in events if e["Type"] == "HttpApi"} == {api_of[name]}


def test_api_cors_throttling_and_outputs(template):
    api = template["Globals"]["HttpApi"]
    assert api["CorsConfiguration"]["AllowOrigins"] == {"Fn::Split": [",", {"Ref": "CorsOrigins"}]}
    assert api["CorsConfiguration"]["AllowCredentials"] is False
    assert api["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "ThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ThrottlingRateLimit"},
    }
    assert "$context.routeKey" in api["AccessLogSettings"]["Format"]
    assert "querystring" not in api["AccessLogSettings"]["Format"].lower(), "queries stay out of access logs"
    assert {"ApiUrl", "FunctionName", "FunctionArn"} <= set(template["Outputs"])


def test_hybrid_sentence_share_parameter_accepts_what_the_setting_accepts(template):
    from search.settings import SPEC, Settings

    env = template["Globals"]["Function"]["Environment"]["Variables"]
    var = SPEC["hybrid_sentence_share"][0]
    assert env[var] == {"Ref": "HybridSentenceShare"}
    parameter = template["Parameters"]["HybridSentenceShare"]
    assert Settings.resolve({var: parameter["Default"]}).hybrid_sentence_share == SPEC["hybrid_sentence_share"][1]
    pattern = re.compile(parameter["AllowedPattern"])
    for value in ("0", "0.25", "0.5", "1", "1.0"):
        assert pattern.match(value) and 0 <= Settings.resolve({var: value}).hybrid_sentence_share <= 1
    for value in ("1.5", "2", "-0.1", ".5", "half", ""):
        assert not pattern.match(value)
