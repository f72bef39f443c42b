"""The build pipeline (template.yaml behind EnableBuildPipeline, build_handler.py).

The state machine's definition is read from the template and checked as a graph; the build
handler runs the way Lambda runs it (the image's task root, ``python -S -s -m awslambdaric
build_handler.handler`` against the local Runtime API in tests/lambda_runtime.py) with moto's S3
server, through plan -> every shard -> merge, and the published index is compared byte for byte
with a local single build.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest

from tests.conftest import write_jsonl
from tests.deploy.test_template import as_list, load_template, walk
from tests.lambda_runtime import ROOT, LambdaProcess, RuntimeAPI, base_python, lambda_environment, task_root
from tests.s3helpers import bucket, moto_url  # noqa: F401 (fixtures)

BUILD = "BuildPipelineOn"
TREE = ROOT / "build" / "task-py311-build"
LAMBDA_ERRORS = "Lambda.TooManyRequestsException"


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="module")
def definition(template) -> dict:
    return template["Resources"]["BuildStateMachine"]["Properties"]["Definition"]


def states_of(machine: dict, prefix: str = "") -> dict[str, dict]:
    """Every state, nested Map processors included, by (qualified) name."""
    found = {}
    for name, state in machine["States"].items():
        found[prefix + name] = state
        if state["Type"] == "Map":
            found.update(states_of(state["ItemProcessor"], f"{prefix}{name}/"))
    return found


def reachable(machine: dict) -> set[str]:
    seen, todo = set(), [machine["StartAt"]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        state = machine["States"][name]
        todo += [state["Next"]] if "Next" in state else []
        todo += [c["Next"] for c in state.get("Choices", [])] + ([state["Default"]] if "Default" in state else [])
        todo += [c["Next"] for c in state.get("Catch", [])]
    return seen


def test_every_state_is_reachable_and_the_machine_ends(definition):
    for machine in [definition] + [s["ItemProcessor"] for s in definition["States"].values() if s["Type"] == "Map"]:
        assert reachable(machine) == set(machine["States"]), "unreachable states"
        assert any(s.get("End") for s in machine["States"].values()), "no end state"
        for state in machine["States"].values():
            assert state.get("End") or state.get("Next") in machine["States"], state
    assert [definition["StartAt"], definition["States"]["Plan"]["Next"], "Merge"] == ["Plan", "BuildShards", "Merge"]


def test_the_map_is_distributed_over_the_plans_items(definition):
    shards = definition["States"]["BuildShards"]
    assert shards["Type"] == "Map" and shards["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert shards["ItemsPath"] == "$.items"  # the Plan step's list of shard events
    assert definition["States"]["Plan"]["ResultSelector"]["items.$"] == "$.Payload.items"
    assert shards["MaxConcurrencyPath"] == "$.max_concurrency"
    assert definition["States"]["Plan"]["ResultSelector"]["max_concurrency.$"] == "$.Payload.max_concurrency"
    assert (
        "ToleratedFailurePercentage" not in shards and shards["ResultPath"] is None
    )  # default 0: any failure fails the build
    assert definition["States"]["Merge"]["Parameters"]["Payload.$"] == "$.merge"
    shard = shards["ItemProcessor"]["States"]["BuildShard"]
    assert set(shard["ResultSelector"]) == {"shard.$", "count.$", "embedded.$"}  # small results, even at 1000 shards


def test_every_lambda_task_retries_throttling(definition, template):
    tasks = {n: s for n, s in states_of(definition).items() if s["Type"] == "Task"}
    assert set(tasks) == {"Plan", "BuildShards/BuildShard", "Merge"}
    subs = template["Resources"]["BuildStateMachine"]["Properties"]["DefinitionSubstitutions"]
    for name, task in tasks.items():
        assert task["Resource"] == "arn:aws:states:::lambda:invoke", name
        assert task["Parameters"]["FunctionName"] in ("${BuildShardArn}", "${MergeArn}"), name
        assert any(LAMBDA_ERRORS in r["ErrorEquals"] for r in task["Retry"]), name
    assert subs == {"BuildShardArn": {"Ref": "BuildShardFunction.Alias"}, "MergeArn": {"Ref": "MergeFunction.Alias"}}


def test_the_pipeline_is_off_by_default_and_uses_the_same_image(template):
    assert template["Parameters"]["EnableBuildPipeline"]["Default"] == "false"
    assert template["Conditions"][BUILD]["Fn::And"][0] == {"Fn::Equals": [{"Ref": "EnableBuildPipeline"}, "true"]}
    build = {k for k, r in template["Resources"].items() if r.get("Condition") == BUILD}
    assert build == {
        "BuildShardFunction",
        "MergeFunction",
        "BuildStateMachine",
        "BuildStateMachineRole",
        "BuildShardRole",
        "MergeRole",
        "BuildLogGroup",
    }
    search = template["Resources"]["SearchImageFunction"]
    for name in ("BuildShardFunction", "MergeFunction"):
        fn = template["Resources"][name]
        assert fn["Metadata"] == search["Metadata"]  # the same image (same Dockerfile, context, tag, arguments)
        assert fn["Properties"]["ImageUri"] == search["Properties"]["ImageUri"]
        assert fn["Properties"]["ImageConfig"]["Command"] == ["build_handler.handler"]
        assert fn["Properties"]["Timeout"] == 900
    assert "build_handler.py" in (ROOT / "deploy" / "files.txt").read_text().split()
    assert template["Resources"]["BuildStateMachine"]["Type"] == "AWS::Serverless::StateMachine"


def test_build_iam_is_scoped_to_the_corpus_work_and_index_prefixes(template):
    allowed = {
        "arn:${AWS::Partition}:s3:::${BuildCorpusBucket}/${BuildCorpusPrefix}*",
        "arn:${AWS::Partition}:s3:::${IndexBucket}/${BuildWorkPrefix}*",
        "arn:${AWS::Partition}:s3:::${IndexBucket}/${IndexPrefix}*",
        "arn:${AWS::Partition}:s3:::${BuildCorpusBucket}",
        "arn:${AWS::Partition}:s3:::${IndexBucket}",
    }
    grants = {}
    for role in ("BuildShardRole", "MergeRole", "BuildStateMachineRole"):
        props = template["Resources"][role]["Properties"]
        assert "ManagedPolicyArns" not in props
        trust = props["AssumeRolePolicyDocument"]["Statement"]
        principal = "states.amazonaws.com" if role == "BuildStateMachineRole" else "lambda.amazonaws.com"
        assert trust == [{"Effect": "Allow", "Principal": {"Service": principal}, "Action": "sts:AssumeRole"}]
        for node in walk(props["Policies"]):
            if isinstance(node, dict) and "Statement" in node:
                for stmt in node["Statement"]:
                    assert stmt["Effect"] == "Allow"
                    for action in as_list(stmt["Action"]):
                        assert "*" not in action, action
                        grants.setdefault(role, set()).add(action)
                        if action.startswith("s3:"):
                            for res in as_list(stmt["Resource"]):
                                assert res["Fn::Sub"] in allowed, res
                            if action == "s3:ListBucket":
                                assert "s3:prefix" in stmt["Condition"]["StringLike"]
    assert grants["BuildShardRole"] == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
    }
    assert "s3:DeleteObject" not in grants["MergeRole"]
    assert grants["BuildStateMachineRole"] == {
        "lambda:InvokeFunction",
        "states:StartExecution",
        "states:DescribeExecution",
        "states:StopExecution",
    }
    merge = template["Resources"]["MergeRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    publish = next(s for s in merge if s["Sid"] == "PublishIndex")
    assert publish["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${IndexBucket}/${IndexPrefix}*"}
    shard = template["Resources"]["BuildShardRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert not any("IndexPrefix" in json.dumps(s) for s in shard), "shards never write the served index"


# ------------------------------------------------------------------ the handler, through awslambdaric


@pytest.fixture(scope="module")
def tree(model_dir) -> Path:
    return task_root(TREE, "3.11", model_dir, None, with_ric=True)


def data_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


@pytest.mark.slow
def test_plan_shards_and_merge_through_awslambdaric(tree, tmp_path, moto_url, bucket, encoder, demo_records):
    from search.index.builder import BuildOptions
    from search.index.corpus import CorpusSpec
    from search.index.pipeline import build
    from search.storage.objects import download_files

    records = demo_records[::15]
    corpus = write_jsonl(tmp_path / "games.jsonl", records)
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.upload_file(str(corpus), bucket, "corpus/games.jsonl")
    api = RuntimeAPI()
    env = lambda_environment(
        api,
        tree,
        {
            "AWS_ENDPOINT_URL_S3": moto_url,
            "SEARCH_MODEL_DIR": str(tree / "model"),
            "SEARCH_INDEX_URI": f"s3://{bucket}/index/",
            "SEARCH_BUILD_WORK_URI": f"s3://{bucket}/build/",
            "SEARCH_BUILD_CORPUS_URI": f"s3://{bucket}/corpus/",
            "SEARCH_BUILD_MAX_CONCURRENCY": "4",
            "TMPDIR": str(tmp_path),
        },
    )
    proc = LambdaProcess(base_python(), [tree], env, api, cwd=tree, handler="build_handler.handler")
    try:
        execution_input = {"corpus": f"s3://{bucket}/corpus/games.jsonl", "shards": 3, "fields": ["section"]}
        kind, _, planned = proc.invoke({"action": "plan", "input": execution_input})
        assert kind == "response", planned
        assert planned["max_concurrency"] == 4 and len(planned["items"]) == 3
        assert planned["merge"]["shards"] == [f"s3://{bucket}/build/shards/3/{i}/" for i in range(3)]
        answers = []
        for item in planned["items"]:
            kind, _, answer = proc.invoke(item)
            assert kind == "response", answer
            answers.append(answer)
        assert sum(a["count"] for a in answers) == len(records) == sum(a["embedded"] for a in answers)
        kind, _, merged = proc.invoke(planned["merge"])
        assert kind == "response", merged
        assert merged["count"] == len(records) and merged["index"] == f"s3://{bucket}/index/"

        # a second build of the same corpus reuses every shard's vectors
        kind, _, again = proc.invoke(planned["items"][1])
        assert kind == "response" and again["embedded"] == 0 and again["reused"] == again["count"]

        # bad input: one typed line, no half-published index
        kind, _, bad = proc.invoke({"action": "plan", "input": {"corpus": "s3://elsewhere/x.jsonl", "shards": 3}})
        assert kind == "error" and bad["errorType"] == "ConfigError" and "outside" in bad["errorMessage"]
        kind, _, bad = proc.invoke({"action": "plan", "input": dict(execution_input, shards=0)})
        assert kind == "error" and "shards must be an integer from 1 to 1000" in bad["errorMessage"]
        kind, _, bad = proc.invoke({"hello": "world"})
        assert kind == "error" and bad["errorType"] == "ConfigError"
    finally:
        proc.close()
        api.close()

    download_files(f"s3://{bucket}/index/", tmp_path / "published", client=boto3.client("s3", endpoint_url=moto_url))
    published = json.loads((tmp_path / "published" / "manifest.json").read_text())
    assert published["data_prefix"].startswith("data/")  # published the way `search upload` does
    local = build(
        str(corpus),
        str(tmp_path / "local"),
        encoder,
        CorpusSpec(fields=("section",)),
        BuildOptions(show_progress=False),
        reuse=None,
        stream=io.StringIO(),
    )
    assert local.manifest["version"] == merged["version"]
    assert data_files(tmp_path / "published") == data_files(tmp_path / "local")


@pytest.mark.slow
def test_the_state_machine_runs_in_motos_step_functions(tree, tmp_path, moto_url, bucket, monkeypatch, demo_records):
    """moto's Step Functions interpreter executes the template's definition (Plan, the Distributed
    Map, Merge); its Lambda calls reach moto's Lambda API, whose invoke is bridged here to the real
    function under awslambdaric (moto itself would need Docker to run a function)."""
    from moto.awslambda.models import LambdaFunction
    from moto.core.config import default_user_config

    from search.storage.objects import download_files

    records = demo_records[::20]
    corpus = write_jsonl(tmp_path / "games.jsonl", records)
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.upload_file(str(corpus), bucket, "corpus/games.jsonl")
    api = RuntimeAPI()
    env = lambda_environment(
        api,
        tree,
        {
            "AWS_ENDPOINT_URL_S3": moto_url,
            "SEARCH_MODEL_DIR": str(tree / "model"),
            "SEARCH_INDEX_URI": f"s3://{bucket}/index/",
            "SEARCH_BUILD_WORK_URI": f"s3://{bucket}/build/",
            "SEARCH_BUILD_CORPUS_URI": f"s3://{bucket}/corpus/",
            "SEARCH_BUILD_MAX_CONCURRENCY": "2",
            "TMPDIR": str(tmp_path),
        },
    )
    proc = LambdaProcess(base_python(), [tree], env, api, cwd=tree, handler="build_handler.handler")

    def invoke(self, event=None):
        kind, _, body = proc.invoke(event)
        return json.dumps(body), kind == "error", ""

    monkeypatch.setattr(LambdaFunction, "_invoke_lambda", invoke)
    monkeypatch.setitem(default_user_config, "stepfunctions", {"execute_state_machine": True})
    monkeypatch.setenv("MOTO_PORT", moto_url.rsplit(":", 1)[1])  # where the interpreter sends its Lambda calls
    try:
        iam = boto3.client("iam", endpoint_url=moto_url)
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]}
        role = iam.create_role(RoleName=f"r-{bucket}", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        lam = boto3.client("lambda", endpoint_url=moto_url)
        arns = {}
        for name in ("BuildShardArn", "MergeArn"):
            arns[name] = lam.create_function(
                FunctionName=f"{name}-{bucket}",
                Runtime="python3.12",
                Role=role,
                Handler="build_handler.handler",
                Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
            )["FunctionArn"]
        text = json.dumps(load_template()["Resources"]["BuildStateMachine"]["Properties"]["Definition"])
        for name, arn in arns.items():
            text = text.replace("${" + name + "}", arn)
        sfn = boto3.client("stepfunctions", endpoint_url=moto_url)
        machine = sfn.create_state_machine(name=f"build-{bucket}", definition=text, roleArn=role)["stateMachineArn"]
        execution = sfn.start_execution(
            stateMachineArn=machine, input=json.dumps({"corpus": f"s3://{bucket}/corpus/games.jsonl", "shards": 3})
        )["executionArn"]
        import time

        deadline = time.monotonic() + 240
        while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the execution did not finish"
            time.sleep(0.5)
        assert described["status"] == "SUCCEEDED", (described, proc.text()[-3000:])
        output = json.loads(described["output"])
        assert output["count"] == len(records) and output["embedded"] == len(records)
    finally:
        proc.close()
        api.close()
    download_files(f"s3://{bucket}/index/", tmp_path / "published", client=s3)
    assert json.loads((tmp_path / "published" / "manifest.json").read_text())["version"] == output["version"]
