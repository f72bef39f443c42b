"""template.yaml, the Dockerfile and .dockerignore, checked without AWS or Docker.

cfn-lint and `sam validate --lint` (the SAM CLI lives in .venv-sam, `make sam`) must pass; then
the template is read as data and held to the rules that matter for a public endpoint: a timeout
under API Gateway's 29 s, no IAM wildcard, S3 read access to the index prefix only, a warmup
schedule, SnapStart on the zip variant only, and a route for every route the app serves.
"""

from __future__ import annotations

import ast
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
    return [
        s
        for node in walk(template["Resources"])
        if isinstance(node, dict) and "Statement" in node
        for s in node["Statement"]
    ]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------ linters


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")  # pinned in requirements-dev.txt
    done = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


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


# ------------------------------------------------------------------ Dockerfile and .dockerignore


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined); the last stage is "final"."""
    lines = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text()).splitlines()
    stages: dict[str, list[str]] = {}
    current = None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            parts = line.split()
            current = parts[3] if len(parts) > 3 and parts[2].upper() == "AS" else "final"
            stages[current] = []
        if current:
            stages[current].append(line)
    return stages


def search_imports(path: Path, seen: set[str]) -> set[str]:
    """search/*.py files a script needs, following `search.x` and relative imports (also inside functions)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level and path.parent.name == "search":
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.module and (node.module == "search" or node.module.startswith("search.")):
                names = [node.module.removeprefix("search").lstrip(".")] + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("search.") for a in node.names if a.name.startswith("search.")]
        for name in filter(None, names):
            module = ROOT / "search" / f"{name.split('.')[0]}.py"
            if module.is_file() and module.name not in seen:
                seen.add(module.name)
                search_imports(module, seen)
    return seen


def test_dockerfile_export_stage_copies_what_the_export_imports():
    needed = {"__init__.py"} | search_imports(ROOT / "export_onnx.py", set())
    copies = [line for line in dockerfile_stages()["model"] if line.startswith("COPY search/")]
    assert len(copies) == 1, copies
    copied = {Path(p).name for p in copies[0].split()[1:-1]}
    assert needed <= copied, f"add {sorted(needed - copied)} to the model stage's COPY search/... line"
    # and the top-level modules it imports (export_graph.py)
    tree = ast.parse((ROOT / "export_onnx.py").read_text())
    local = {
        f"{n.module}.py"
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and (ROOT / f"{n.module}.py").is_file()
    }
    assert local, "export_onnx.py imports export_graph.py"
    top_copies = {
        p
        for line in dockerfile_stages()["model"]
        if line.startswith("COPY ") and "search/" not in line
        for p in line.split()[1:-1]
    }
    assert local <= top_copies, f"add {sorted(local - top_copies)} to the model stage's COPY line"


def test_dockerfile_runtime_stage():
    stages = dockerfile_stages()
    final = stages["final"]
    assert final[0] == "FROM ${LAMBDA_BASE}"
    assert "ARG LAMBDA_BASE=public.ecr.aws/lambda/python:3.12" in DOCKERFILE.read_text()
    assert final[-1] == 'CMD ["handler.handler"]'
    text = "\n".join(final)
    assert "torch" not in text and "requirements-export" not in text and "tests" not in text
    # Layers from least to most often changed: requirements, model, index, code.
    order = [
        next(i for i, line in enumerate(final) if marker in line)
        for marker in ("taskroot.py deps", "--from=model", "--from=index", "--from=code")
    ]
    assert order == sorted(order), order
    assert "taskroot.py code" in "\n".join(stages["code"])
    assert "export_onnx.py" in "\n".join(stages["model"])
    env = text[text.index("ENV ") :]
    assert "SEARCH_MODEL_DIR=/var/task/model" in env and "SEARCH_INDEX_URI=/var/task/index" in env


def test_dockerignore_keeps_the_context_small_but_complete():
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in ("build", ".venv", "tests", "data", ".git"):
        assert excluded in rules, excluded
    assert "!data/demo-games.jsonl" in rules
    from deploy import taskroot

    needed = taskroot.code_paths() + [
        "requirements.txt",
        "requirements-export.txt",
        "export_onnx.py",
        "export_graph.py",
        "verification",
        "deploy",
    ]
    for rel in needed:
        top = rel.split("/")[0]
        assert top not in rules, f"{rel} is needed in the image but .dockerignore drops {top}"


# ------------------------------------------------------------------ the task-root recipe


def test_files_list_errors_name_the_line(tmp_path):
    from deploy import taskroot

    listed = taskroot.code_paths()
    assert "handler.py" in listed and "search" in listed
    bad = tmp_path / "files.txt"
    bad.write_text("# comment\nhandler.py\nno/such/module.py\n")
    with pytest.raises(taskroot.RecipeError, match=r"files.txt:3: 'no/such/module.py' does not exist"):
        taskroot.code_paths(bad)
    bad.write_text("../outside.py\n")
    with pytest.raises(taskroot.RecipeError, match=r"files.txt:1: .* inside the repo"):
        taskroot.code_paths(bad)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "taskroot.py"),
            "data",
            "--target",
            str(tmp_path / "t"),
            "--model",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "manifest.json missing" in done.stderr, done.stderr


def test_dropping_a_distribution_keeps_what_others_need():
    from deploy import taskroot

    dists = {
        "tokenizers": {"requires": ["huggingface-hub"]},
        "huggingface-hub": {"requires": ["tqdm", "packaging", "pyyaml"]},
        "onnxruntime": {"requires": ["packaging", "numpy"]},
        "tqdm": {"requires": []},
        "packaging": {"requires": []},
        "pyyaml": {"requires": []},
        "numpy": {"requires": []},
    }
    dropped = taskroot.droppable(dists, {"huggingface-hub"}, wanted={"tokenizers", "onnxruntime", "pyyaml"})
    assert dropped == {"huggingface-hub", "tqdm"}  # packaging: onnxruntime needs it; pyyaml: asked for
