"""The container image, built from the real Dockerfile and run here (deploy/image.py, `make image-test`).

Debian's Docker engine is started by this module with no bridge network, the base images are the
stand-ins deploy/image.py makes (Debian bookworm + CPython 3.12 + awslambdaric + AWS's Runtime
Interface Emulator), and the Dockerfile is built offline through its build arguments.  Then:

* every event in events/ through the image, once against the tests' own Runtime API on 127.0.0.1
  (tests/lambda_runtime.py; the container on the host network) and once through AWS's emulator
  inside the container (the stand-in entrypoint runs it when AWS_LAMBDA_RUNTIME_API is unset);
* an init failure (no index): on our Runtime API it must reach /runtime/init/error with an error
  type and no /next call after it (what the emulator does not show); through the emulator it comes
  back as the invoke's 502 answer.  SnapStart's restore hooks stay on our Runtime API only
  (test_runtime_api.py): the emulator has no restore phase;
* the image's contents: deploy/files.txt's files and nothing of torch, compilers or tests, and the
  compiled kernel's glibc symbol versions at most GLIBC_2.34 (Amazon Linux 2023's glibc);
* the zip variant (layers/ + deploy/zip) unpacked into /opt and /var/task of the stand-in;
* `sam local invoke`, and what stops it on an engine without a bridge network.

Without root, dockerd, debootstrap or the SAM CLI's emulator it skips, saying which.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy import image
from tests.conftest import ROOT
from tests.deploy.test_runtime_api import EVENTS, FORBIDDEN, template_environment
from tests.lambda_runtime import INIT_TIMEOUT_SECONDS, RuntimeAPI, zip_parts
from tests.test_handler import EXPECTED

pytestmark = pytest.mark.slow
MAX_GLIBC = (2, 34)  # Amazon Linux 2023, the python3.12 runtime's OS
SAM = ROOT / ".venv-sam" / "bin" / "sam"


# ---------------------------------------------------------------- fixtures: engine, bases, image


def test_skips_say_what_is_missing():
    """The reasons the module skips with (asserted here, as the message a person reads in the summary)."""
    assert "needs root" in image.unavailable_reason(euid=1000)
    nothing = image.unavailable_reason(euid=0, which=lambda name: None)
    assert "dockerd and debootstrap missing" in nothing and "no apt-get" in nothing
    with_apt = image.unavailable_reason(euid=0, which=lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    assert "make image-engine" in with_apt
    everything = lambda name: f"/usr/bin/{name}"  # noqa: E731
    assert "make sam" in image.unavailable_reason(euid=0, which=everything, sam_rie=None)
    assert "CPython 3.12" in image.unavailable_reason(euid=0, which=everything, sam_rie=Path("/rie"), python=None)
    assert image.unavailable_reason(euid=0, which=everything, sam_rie=Path("/rie"), python=Path("/py")) is None


def test_engine_that_cannot_start_says_why(tmp_path):
    """An engine home whose socket path is too long for a unix socket: EngineUnavailable (the fixture
    below turns it into a skip), before anything is started."""
    engine = image.Engine(tmp_path / ("x" * 110))
    with pytest.raises(image.EngineUnavailable, match="too long for a unix socket"):
        engine.start()
    assert engine.proc is None


@pytest.fixture(scope="module")
def engine():
    reason = image.unavailable_reason()
    if reason:
        pytest.skip(f"container image not tested: {reason}")
    engine = image.Engine()
    try:
        engine.start()
    except image.EngineUnavailable as exc:
        pytest.skip(f"container image not tested: {exc}")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def bases(engine) -> dict[str, str]:
    return image.base_images(engine)


@pytest.fixture(scope="module")
def built(engine, bases, model_dir) -> dict:
    return image.build_function_image(engine, model_dir, bases=bases)


def function_env(**extra) -> dict[str, str]:
    """template.yaml's plain variables, Lambda's own, and ``extra``."""
    return {**template_environment(), **image.FUNCTION_ENV, **extra}


def header(response: dict, name: str) -> str | None:
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name:
            return value
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name:
            return ", ".join(values)
    return None


def check_answer(name: str, response: dict) -> None:
    """The answer each event must get, as tests/test_handler.py's EXPECTED gives it."""
    kind, *rest = EXPECTED[name]
    if kind == "warm":
        assert response["warm"] is True and response["index"]["count"] == 1108, f"{name}: {response}"
        return
    if kind == "unsupported":
        assert response["error"]["code"] == "unsupported_event", f"{name}: {response}"
        return
    if kind == "html":
        assert response["statusCode"] == 200 and header(response, "content-type").startswith("text/html"), name
        return
    status, query = rest
    assert response["statusCode"] == status, f"{name}: {response['statusCode']} {response.get('body', '')[:300]}"
    body = json.loads(response["body"])
    if status == 200:
        assert body["query"] == query and body["results"] and body["index"]["count"] == 1108, f"{name}: {body}"
    else:
        assert body["error"]["code"] == "invalid_request" and "Traceback" not in response["body"], f"{name}: {body}"


def every_event_through_rie(port: int) -> int:
    for path in EVENTS:
        status, raw = image.invoke_rie(port, path.read_bytes())
        assert status == 200, f"{path.name}: emulator answered {status}: {raw[:500]!r}"
        check_answer(path.name, json.loads(raw))
    return len(EVENTS)


# ---------------------------------------------------------------- the stand-in base


def test_stand_in_base_keeps_the_lambda_base_contract(engine, bases):
    script = (
        "import json, os, shutil, sys; sys.path.insert(0, os.environ['LAMBDA_RUNTIME_DIR']); import awslambdaric; "
        "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'task': os.environ['LAMBDA_TASK_ROOT'], "
        "'runtime': os.environ['LAMBDA_RUNTIME_DIR'], 'ric': awslambdaric.__file__, 'cwd': os.getcwd(), "
        "'entrypoint': os.access('/lambda-entrypoint.sh', os.X_OK), 'rie': os.access('/usr/local/bin/aws-lambda-rie', "
        "os.X_OK), 'compilers': [c for c in ('cc', 'gcc', 'clang', 'dnf', 'yum') if shutil.which(c)]}))"
    )
    out = engine.docker("run", "--rm", "--network", "none", "--entrypoint", "python3", bases["lambda"], "-c", script)
    seen = json.loads(out.stdout)
    assert seen["python"] == "3.12" and seen["task"] == "/var/task" and seen["runtime"] == "/var/runtime", seen
    assert seen["ric"].startswith("/var/runtime/") and seen["cwd"] == "/var/task", seen
    assert seen["entrypoint"] and seen["rie"] and seen["compilers"] == [], seen
    # The AWS entrypoint's own check: exactly one argument, the handler.
    wrong = engine.docker("run", "--rm", "--network", "none", bases["lambda"], "a", "b", check=False)
    assert wrong.returncode == 142 and b"handler name" in wrong.stderr


# ---------------------------------------------------------------- the function image


def test_every_event_against_the_runtime_api(engine, built):
    """AWS_LAMBDA_RUNTIME_API set: the entrypoint starts awslambdaric against our Runtime API on 127.0.0.1."""
    api = RuntimeAPI()
    try:
        with image.Container(engine, built["tag"], env=function_env(AWS_LAMBDA_RUNTIME_API=api.address)) as box:
            assert api.wait_init(INIT_TIMEOUT_SECONDS) == "ready", box.logs()[-3000:]
            for path in EVENTS:
                request_id = api.submit(path.read_bytes())
                kind, _, raw = api.wait(request_id, 120)
                assert kind == "response", f"{path.name}: {raw[:500]!r}"
                check_answer(path.name, json.loads(raw))
    finally:
        api.close()
    assert api.init_error is None
    assert box.output.count('"message":"loaded"') == 1, "model and index must load once per environment"
    assert "Traceback" not in box.output, box.output[-3000:]


def test_missing_index_is_an_init_error(engine, built):
    api = RuntimeAPI()
    missing = "/var/task/no-index-here"
    try:
        env = function_env(AWS_LAMBDA_RUNTIME_API=api.address, SEARCH_INDEX_URI=missing)
        with image.Container(engine, built["tag"], env=env) as box:
            assert api.wait_init(INIT_TIMEOUT_SECONDS) == "error", box.logs()[-3000:]
            code = box.wait()
    finally:
        api.close()
    headers, body = api.init_error
    error = json.loads(body)
    assert code != 0 and api.next_calls == 0, (code, api.log)
    assert headers.get("lambda-runtime-function-error-type"), headers
    assert missing in error["errorMessage"] and len(error["errorMessage"]) < 500, error


def test_every_event_through_the_emulator(engine, built):
    """AWS_LAMBDA_RUNTIME_API unset: the entrypoint runs AWS's emulator, which prints Lambda's REPORT lines."""
    port, api_port = image.free_port(), image.free_port()
    with image.Container(engine, built["tag"], env=function_env(**image.rie_env(port, api_port))) as box:
        count = every_event_through_rie(port)
    reports = image.parse_reports(box.output)
    assert len(reports) == count, box.output[-3000:]
    assert all({"Duration", "Billed Duration", "Max Memory Used"} <= set(r) for r in reports), reports
    assert image.init_report_ms(box.output) is not None, box.output[-3000:]
    assert box.output.count('"message":"loaded"') == 1 and "Traceback" not in box.output


def test_missing_index_through_the_emulator(engine, built):
    """The RIE relays an init error as the invoke's answer (502 with the runtime's error body) and retries
    init on the next invoke; the error-type header and "no /next after a failed init" are checked above."""
    port, api_port = image.free_port(), image.free_port()
    missing = "/var/task/no-index-here"
    env = function_env(SEARCH_INDEX_URI=missing, **image.rie_env(port, api_port))
    with image.Container(engine, built["tag"], env=env) as box:
        status, raw = image.invoke_rie(port, (ROOT / "events" / "warmup.json").read_bytes())
    error = json.loads(raw)
    assert status == 502 and error["errorType"] == "IndexLoadError", (status, raw[:500])
    assert missing in error["errorMessage"] and len(error["errorMessage"]) < 500, error
    assert "INIT RTDONE(status: error)" in box.output, box.output[-3000:]


def test_image_holds_the_listed_files_and_nothing_else(engine, built, tmp_path):
    seen = image.inspect_contents(engine, built["tag"], FORBIDDEN)
    assert seen["found"] == [] and seen["compilers"] == [] and seen["tests"] == [], seen
    files = set(seen["files"])
    code_roots = tuple(r.rstrip("/") for r in image.taskroot().code_paths())
    code = {f for f in files if f.startswith(code_roots) and "__pycache__" not in f}
    kernel = image.KERNEL
    assert code - {kernel} == set(built["code_files"]), "the image's code differs from deploy/files.txt's files"
    assert kernel in code, "the int8 kernel was not compiled into the image"
    # every module byte-compiled for 3.12 (the task root is read-only in Lambda)
    pyc = {f for f in files if f.endswith(".cpython-312.pyc")}
    for rel in (f for f in built["code_files"] if f.endswith(".py")):
        folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        compiled = f"{folder + '/' if folder else ''}__pycache__/{name[:-3]}.cpython-312.pyc"
        assert compiled in pyc, f"{rel} has no .pyc in the image"
    assert {"model/manifest.json", "index/manifest.json"} <= files
    # The kernel's glibc symbol versions, read from the image's copy.
    versions = image.glibc_versions(image.copy_out(engine, built["tag"], f"/var/task/{kernel}", tmp_path / "k.so"))
    assert all(v <= MAX_GLIBC for v in versions), f"kernel needs glibc {max(versions)} > {MAX_GLIBC}"


def test_glibc_check_reads_real_symbol_versions():
    """The check above is not vacuous: a binary built here (glibc 2.36) shows its versions."""
    assert max(image.glibc_versions(Path("/bin/ls"))) >= (2, 3), "readelf found no GLIBC versions in /bin/ls"


# ---------------------------------------------------------------- the zip variant


def test_zip_variant_in_the_stand_in(engine, bases, model_dir, demo_index):
    """The zip function's parts as Lambda unpacks them: the code in /var/task, the runtime layer's python/
    at /opt/python, the model layer at /opt/model; invoked through the emulator."""
    parts = zip_parts(model_dir, demo_index)
    mounts = [
        (parts["function"], "/var/task"),
        (parts["runtime-layer"] / "python", "/opt/python"),
        (parts["model-layer"] / "model", "/opt/model"),
    ]
    port, api_port = image.free_port(), image.free_port()
    env = function_env(
        SEARCH_MODEL_DIR="/opt/model", SEARCH_INDEX_URI="/var/task/index", **image.rie_env(port, api_port)
    )
    with image.Container(engine, bases["lambda"], env=env, mounts=mounts, args=["handler.handler"]) as box:
        count = every_event_through_rie(port)
    assert len(image.parse_reports(box.output)) == count and "Traceback" not in box.output, box.output[-3000:]


# ---------------------------------------------------------------- SAM CLI


def test_sam_local_invoke(engine, built, tmp_path):
    """`sam local invoke --skip-pull-image --docker-network host` on the built image.

    SAM CLI reaches the function's emulator only through a published port (container 8080 ->
    127.0.0.1:<random 5000-9000>), and publishing a port needs a bridge network.  It does not run
    the container in the host network for `--docker-network host` (it only skips connecting it to
    a named network), so on this engine (--bridge=none) the container has no network and SAM times
    out.  What SAM does before that -- resolve the template, build its emulator layer on the image
    (`<repo>:rapid-x86_64`), create the container -- is checked, then that very image is run the
    way SAM runs it (its emulator as entrypoint, the image's entrypoint and CMD after it) on the host
    network, and every event goes through it."""
    env = dict(engine.env, SAM_CLI_TELEMETRY="0", SAM_CLI_CONTAINER_CONNECTION_TIMEOUT="3", HOME=str(tmp_path))
    cmd = [
        str(SAM), "local", "invoke", "SearchImageFunction", "--template", str(ROOT / "template.yaml"),
        "--parameter-overrides", f"PrebuiltImageUri={built['tag']}", "--skip-pull-image",
        "--docker-network", "host", "--container-host-interface", "127.0.0.1",
        "--event", str(ROOT / "events" / "warmup.json"),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    rapid = built["tag"].split(":")[0] + ":rapid-x86_64"
    if done.stdout.strip():  # a SAM release that runs it here (it exits 0 on the timeout too): check its answer
        check_answer("warmup.json", json.loads(done.stdout.strip().splitlines()[-1]))
        return
    assert "Timed out while attempting to establish a connection to the container" in said, said[-3000:]
    assert engine.has_image(rapid), f"SAM did not build its emulator image {rapid}:\n{said[-2000:]}"
    # The nearest thing that runs: SAM's own image and entry point, on the host network.
    port, api_port = image.free_port(), image.free_port()
    entry = ["--log-level", "error", "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
             "--runtime-api-address", f"127.0.0.1:{api_port}", "/lambda-entrypoint.sh", "handler.handler"]  # fmt: skip
    with image.Container(engine, rapid, env=function_env(), entrypoint="/var/rapid/aws-lambda-rie", args=entry) as box:
        count = every_event_through_rie(port)
    assert len(image.parse_reports(box.output)) == count, box.output[-3000:]
