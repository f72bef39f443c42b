"""The function run the way Lambda runs it, without AWS or Docker.

The task root is assembled by the image's own recipe (deploy/taskroot.py: requirements.txt for
Linux x86_64, the paths in deploy/files.txt, the model bundle, the demo index), then started as
``python -S -s -m awslambdaric handler.handler`` with only that tree on the path, against a small
Lambda Runtime API on 127.0.0.1 (tests/lambda_runtime.py).  Every event in events/ goes through
it.  Passing proves the image's file set is complete and torch-free, and that init errors reach
Lambda through the init-error endpoint with a message a person can act on.

    build/task-py311   cp311 build of the image's tree + awslambdaric: runs on any machine here
    build/task         the real cp312 tree (the image's /var/task), run when python3.12 is here
    build/lambda-zip/  the zip variant (code + runtime layer + model layer), with SnapStart's
                       restore step, also on python3.12
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.lambda_runtime import (
    INIT_TIMEOUT_SECONDS,
    ROOT,
    LambdaProcess,
    RuntimeAPI,
    base_python,
    lambda_environment,
    runtime_client_dir,
    task_root,
    taskroot,
    udp_sink,
    zip_parts,
)

pytestmark = pytest.mark.slow

EVENTS = sorted((ROOT / "events").glob("*.json"))
TREE_PY311 = ROOT / "build" / "task-py311"
TREE_PY312 = ROOT / "build" / "task"
FORBIDDEN = ("torch", "transformers", "sentence_transformers", "pytest", "moto", "onnx", "huggingface_hub")


def template_environment() -> dict[str, str]:
    """The plain (non-intrinsic) variables template.yaml gives the function, so the test runs with them."""
    from tests.deploy.test_template import load_template  # one YAML loader for the template, in its own test module

    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    return {k: v for k, v in variables.items() if isinstance(v, str)}


@pytest.fixture(scope="module")
def tree_py311(model_dir, demo_index) -> Path:
    return task_root(TREE_PY311, "3.11", model_dir, demo_index, with_ric=True)


@pytest.fixture(scope="module")
def python312() -> str:
    exe = taskroot().find_python("3.12")
    if exe is None:
        pytest.skip("no python3.12 on this machine: the cp312 trees are checked by size only")
    return exe


def start(
    python: str, path: list[Path], task_root_dir: Path, tmp_path: Path, **env
) -> tuple[LambdaProcess, RuntimeAPI]:
    api = RuntimeAPI()
    settings = {**template_environment(), "SEARCH_CACHE_DIR": str(tmp_path / "cache"), **env}
    proc = LambdaProcess(python, path, lambda_environment(api, task_root_dir, settings), api, cwd=task_root_dir)
    return proc, api


def expect_answer(name: str, kind: str, body) -> None:
    """What each kind of event must produce (names as in events/: http/rest/alb/function-url, warmup, unsupported)."""
    assert kind == "response", f"{name}: the handler raised: {body}"
    if name.startswith("warmup"):
        assert body["warm"] is True and body["index"]["count"] > 0, f"{name}: {body}"
    elif "unsupported" in name:
        assert body["error"]["code"] == "unsupported_event", f"{name}: {body}"
    else:
        assert isinstance(body["statusCode"], int) and isinstance(body["body"], str), f"{name}: {body}"
        assert body.get("headers") or body.get("multiValueHeaders"), f"{name}: no headers"
        if "bad" in name:
            assert 400 <= body["statusCode"] < 500, f"{name}: {body['statusCode']}"
            assert "Traceback" not in body["body"], f"{name}: a traceback in the answer"
        else:
            assert body["statusCode"] == 200, f"{name}: {body['statusCode']} {body['body'][:300]}"
        if "search" in name and "bad" not in name:
            answer = json.loads(body["body"])
            assert answer["results"] and answer["results"][0]["id"], f"{name}: no results"


def run_every_event(proc: LambdaProcess) -> dict[str, tuple[str, object]]:
    answers = {}
    for path in EVENTS:
        kind, _, body = proc.invoke(json.loads(path.read_text()))
        expect_answer(path.stem, kind, body)
        answers[path.stem] = (kind, body)
    return answers


def test_events_exist():
    kinds = {p.stem for p in EVENTS}
    assert any(k.startswith("warmup") for k in kinds) and any("search" in k for k in kinds), kinds


def test_tree_holds_no_build_time_packages(tree_py311):
    present = [name for name in FORBIDDEN if (tree_py311 / name).exists()]
    assert not present, f"build-time packages in the task root: {present}"
    for rel in taskroot().code_paths():
        assert (tree_py311 / rel).exists(), rel
    assert (tree_py311 / "model" / "manifest.json").is_file() and (tree_py311 / "index" / "manifest.json").is_file()


def test_isolated_interpreter_sees_only_the_tree(tree_py311):
    """The flags the runtime is started with really hide the virtualenv (torch, pytest live there)."""
    probe = (
        "import importlib.util, json, sys; "
        f"print(json.dumps({{'path': sys.path, 'found': [m for m in {list(FORBIDDEN)!r} "
        "if importlib.util.find_spec(m)]}))"
    )
    out = subprocess.run(
        [base_python(), "-S", "-s", "-c", probe],
        env={"PYTHONPATH": str(tree_py311)},
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout)
    assert seen["found"] == [], seen["found"]
    assert not [p for p in seen["path"] if "site-packages" in p], seen["path"]


def test_every_event_through_awslambdaric(tree_py311, tmp_path):
    sock, segments = udp_sink()  # stand-in X-Ray daemon
    proc, api = start(
        base_python(),
        [tree_py311],
        tree_py311,
        tmp_path,
        SEARCH_MODEL_DIR=str(tree_py311 / "model"),
        SEARCH_INDEX_URI=str(tree_py311 / "index"),
        AWS_XRAY_DAEMON_ADDRESS=f"127.0.0.1:{sock.getsockname()[1]}",
    )
    try:
        run_every_event(proc)
        # A second round on the same environment: still one model load, all answers alike.
        for path in EVENTS:
            kind, _, body = proc.invoke(json.loads(path.read_text()))
            expect_answer(path.stem, kind, body)
    finally:
        proc.close()
        api.close()
        sock.close()
    output = proc.text()
    assert api.init_error is None
    assert output.count('"message":"loaded"') == 1, "model and index must load once per environment"
    names = {json.loads(seg.split(b"\n", 1)[1]).get("name") for seg in segments if b"\n" in seg}
    assert {"embed", "search"} <= names, f"X-Ray subsegments seen: {sorted(n for n in names if n)}"
    assert "Traceback" not in output, output[-3000:]


def init_error(proc: LambdaProcess, api: RuntimeAPI) -> dict:
    outcome = api.wait_init(INIT_TIMEOUT_SECONDS)
    assert outcome == "error", (
        "init finished without reporting the error to /runtime/init/error: the function "
        f"would take requests it cannot answer. Output:\n{proc.text()[-3000:]}"
    )
    code = proc.wait_exit()
    headers, body = api.init_error
    error = json.loads(body)
    assert code != 0
    assert headers.get("lambda-runtime-function-error-type"), headers
    assert api.next_calls == 0, "an environment whose init failed must not take invocations"
    return error


def test_missing_model_is_an_init_error(tree_py311, tmp_path):
    missing = tmp_path / "no-model"
    proc, api = start(
        base_python(),
        [tree_py311],
        tree_py311,
        tmp_path,
        SEARCH_MODEL_DIR=str(missing),
        SEARCH_INDEX_URI=str(tree_py311 / "index"),
    )
    try:
        error = init_error(proc, api)
    finally:
        proc.close()
        api.close()
    assert str(missing) in error["errorMessage"] and "model" in error["errorMessage"].lower(), error
    assert len(error["errorMessage"]) < 500, "one readable line, not a dump"


def test_bad_index_location_is_an_init_error(tree_py311, tmp_path):
    missing = tmp_path / "no-index-here"
    proc, api = start(
        base_python(),
        [tree_py311],
        tree_py311,
        tmp_path,
        SEARCH_MODEL_DIR=str(tree_py311 / "model"),
        SEARCH_INDEX_URI=str(missing),
    )
    try:
        error = init_error(proc, api)
    finally:
        proc.close()
        api.close()
    assert str(missing) in error["errorMessage"], error
    assert len(error["errorMessage"]) < 500, "one readable line, not a dump"


def test_snapstart_restore_then_invoke(tree_py311, tmp_path):
    """With AWS_LAMBDA_INITIALIZATION_TYPE=snap-start the runtime client runs the before-snapshot
    hooks, waits on /restore/next (the snapshot), runs the after-restore hooks, then serves."""
    proc, api = start(
        base_python(),
        [tree_py311],
        tree_py311,
        tmp_path,
        SEARCH_MODEL_DIR=str(tree_py311 / "model"),
        SEARCH_INDEX_URI=str(tree_py311 / "index"),
        AWS_LAMBDA_INITIALIZATION_TYPE="snap-start",
    )
    try:
        event = json.loads((ROOT / "events" / "http-api-get-search.json").read_text())
        kind, _, body = proc.invoke(event)
        expect_answer("http-api-get-search", kind, body)
    finally:
        proc.close()
        api.close()
    assert api.log[:2] == ["restore/next", "next"], api.log
    assert api.restore_error is None, api.restore_error


# ---------------------------------------------------------------- the real cp312 trees


def test_image_tree_py312_every_event(python312, model_dir, demo_index, tmp_path):
    """build/task is the image's /var/task (cp312 wheels); awslambdaric comes from beside it,
    as /var/runtime in the base image."""
    tree = task_root(TREE_PY312, "3.12", model_dir, demo_index, with_ric=False)
    assert not (tree / "awslambdaric").exists(), "the base image provides the runtime client"
    proc, api = start(
        python312,
        [tree, runtime_client_dir("3.12")],
        tree,
        tmp_path,
        SEARCH_MODEL_DIR=str(tree / "model"),
        SEARCH_INDEX_URI=str(tree / "index"),
    )
    try:
        run_every_event(proc)
    finally:
        proc.close()
        api.close()
    assert api.init_error is None and "Traceback" not in proc.text(), proc.text()[-3000:]


def test_zip_variant_py312_with_snapstart(python312, model_dir, demo_index, tmp_path):
    """The zip function as Lambda lays it out: code in /var/task, the runtime layer's python/ on
    the path (/opt/python), the model layer at /opt/model; SnapStart's restore step first."""
    parts = zip_parts(model_dir, demo_index)
    function, layer_python = parts["function"], parts["runtime-layer"] / "python"
    proc, api = start(
        python312,
        [function, layer_python, runtime_client_dir("3.12")],
        function,
        tmp_path,
        SEARCH_MODEL_DIR=str(parts["model-layer"] / "model"),
        SEARCH_INDEX_URI=str(function / "index"),
        AWS_LAMBDA_INITIALIZATION_TYPE="snap-start",
    )
    try:
        run_every_event(proc)
    finally:
        proc.close()
        api.close()
    assert api.log[0] == "restore/next", api.log
    assert api.init_error is None and "Traceback" not in proc.text(), proc.text()[-3000:]
