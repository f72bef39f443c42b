"""A small Lambda Runtime API on 127.0.0.1, and a function run against it the way Lambda runs it.

The server speaks the documented interface (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html)
that the real runtime client, ``awslambdaric``, talks to:

    GET  /2018-06-01/runtime/invocation/next            -> the next event (blocks until there is one)
    POST /2018-06-01/runtime/invocation/{id}/response   -> the function's result
    POST /2018-06-01/runtime/invocation/{id}/error      -> an unhandled exception in the handler
    POST /2018-06-01/runtime/init/error                 -> an exception while importing the handler
    GET  /2018-06-01/runtime/restore/next               -> SnapStart: snapshot taken, now restored
    POST /2018-06-01/runtime/restore/error              -> SnapStart: an after-restore hook failed

``LambdaProcess`` starts ``python -S -s -m awslambdaric handler.handler`` with only the given
folders on ``sys.path`` (no site-packages, so nothing from the test virtualenv leaks in) and the
environment Lambda sets, then ``invoke()`` hands it events one at a time.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "/2018-06-01/runtime"
FUNCTION_NAME = "search-test"
INVOKE_TIMEOUT_SECONDS = 60.0  # generous: two cores shared by many test processes
INIT_TIMEOUT_SECONDS = 90.0


class RuntimeAPI:
    """The Runtime API side of one execution environment."""

    def __init__(self):
        self.pending: queue.Queue = queue.Queue()
        self.results: dict[str, tuple[str, dict, bytes]] = {}  # request id -> (kind, headers, body)
        self.answered = threading.Condition()
        self.init_error: tuple[dict, bytes] | None = None
        self.restore_error: tuple[dict, bytes] | None = None
        self.log: list[str] = []  # "GET /next", "POST /response" ... in arrival order
        self.next_calls = 0
        self.stopping = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the runtime client expects

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                path = self.path
                if path == f"{PREFIX}/invocation/next":
                    api.log.append("next")
                    with api.answered:
                        api.next_calls += 1  # init is over: the runtime asks for work
                        api.answered.notify_all()
                    while not api.stopping.is_set():
                        try:
                            request_id, event = api.pending.get(timeout=0.2)
                        except queue.Empty:
                            continue
                        deadline_ms = int((time.time() + 30) * 1000)
                        self._reply(
                            200,
                            event,
                            {
                                "Content-Type": "application/json",
                                "Lambda-Runtime-Aws-Request-Id": request_id,
                                "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                                "Lambda-Runtime-Invoked-Function-Arn": f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION_NAME}",
                                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=1",
                            },
                        )
                        return
                    self._reply(503, b'{"errorMessage": "shutting down"}')
                elif path == f"{PREFIX}/restore/next":
                    api.log.append("restore/next")
                    self._reply(200)
                else:
                    self._reply(404, b'{"errorMessage": "unknown path"}')

            def do_POST(self):
                body, path = self._body(), self.path
                headers = {k.lower(): v for k, v in self.headers.items()}
                if path.startswith(f"{PREFIX}/invocation/") and path.endswith(("/response", "/error")):
                    request_id, kind = path[len(f"{PREFIX}/invocation/") :].rsplit("/", 1)
                    api.log.append(kind)
                    with api.answered:
                        api.results[request_id] = (kind, headers, body)
                        api.answered.notify_all()
                    self._reply(202, b'{"status": "OK"}')
                elif path in (f"{PREFIX}/init/error", f"{PREFIX}/restore/error"):
                    stage = path[len(PREFIX) + 1 : -len("/error")]  # "init" or "restore"
                    api.log.append(f"{stage}/error")
                    with api.answered:
                        setattr(api, f"{stage}_error", (headers, body))
                        api.answered.notify_all()
                    self._reply(202, b'{"status": "OK"}')
                else:
                    self._reply(404, b'{"errorMessage": "unknown path"}')

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], (ConnectionError, OSError)):
                    super().handle_error(request, client_address)  # a killed function resets its socket

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def submit(self, event) -> str:
        request_id = str(uuid.uuid4())
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        self.pending.put((request_id, payload))
        return request_id

    def wait(self, request_id: str, timeout: float) -> tuple[str, dict, bytes]:
        with self.answered:
            if not self.answered.wait_for(lambda: request_id in self.results or self.init_error, timeout):
                raise TimeoutError(f"no answer to {request_id} within {timeout:.0f} s")
            if request_id not in self.results:
                raise AssertionError(f"init failed instead: {self.init_error[1][:500]!r}")
            return self.results[request_id]

    def wait_init(self, timeout: float) -> str:
        """ "error" once /init/error was posted, "ready" once the function asked for its first event."""
        with self.answered:
            if not self.answered.wait_for(lambda: self.init_error or self.next_calls, timeout):
                raise TimeoutError(f"init neither failed nor finished within {timeout:.0f} s")
            return "error" if self.init_error else "ready"

    def close(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def udp_sink() -> tuple[socket.socket, list[bytes]]:
    """A stand-in X-Ray daemon: collects the UDP segments the tracer sends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    received: list[bytes] = []

    def collect():
        while sock.fileno() != -1:
            try:
                received.append(sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=collect, daemon=True).start()
    return sock, received


def lambda_environment(api: RuntimeAPI, task_root: Path, extra: dict[str, str]) -> dict[str, str]:
    """What Lambda sets for a python3.12 function (names from the Lambda docs), plus ``extra``."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "HOME": str(task_root.parent),
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(task_root),
        "_HANDLER": "handler.handler",
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Invalid on purpose: the demo index is local, so nothing may call AWS.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "SEARCH_THREADS": "1",  # two cores shared by the whole test run
    }
    env.update(extra)
    return env


class LambdaProcess:
    """One execution environment: ``python -S -s -m awslambdaric handler.handler``."""

    def __init__(
        self,
        python: str,
        path: list[Path],
        env: dict[str, str],
        api: RuntimeAPI,
        cwd: Path,
        handler: str = "handler.handler",
    ):
        self.api = api
        env = dict(env, PYTHONPATH=os.pathsep.join(str(p) for p in path), PYTHONDONTWRITEBYTECODE="1")
        # -S: no site module, so no site-packages at all (the tree must hold everything);
        # -s: no user site either; PYTHONDONTWRITEBYTECODE: /var/task is read-only in Lambda.
        self.proc = subprocess.Popen(
            [python, "-S", "-s", "-m", "awslambdaric", handler],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self.output += chunk

    def invoke(self, event, timeout: float = INVOKE_TIMEOUT_SECONDS) -> tuple[str, dict, object]:
        """(kind "response"|"error", headers, decoded JSON body) for one event."""
        request_id = self.api.submit(event)
        try:
            kind, headers, body = self.api.wait(request_id, timeout)
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"{exc}\n--- function output ---\n{self.text()[-4000:]}") from None
        return kind, headers, json.loads(body)

    def wait_exit(self, timeout: float = INIT_TIMEOUT_SECONDS) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def text(self) -> str:
        return bytes(self.output).decode("utf-8", "replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


def base_python() -> str:
    """The interpreter behind the test virtualenv (with -S it would not see the venv anyway)."""
    return getattr(sys, "_base_executable", None) or sys.executable


# ---------------------------------------------------------------- the trees under test
# Built with the same recipe as the image and the layers (deploy/taskroot.py); each call is quick
# when nothing changed (the dependency install is stamped, the code is copied again).

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "build" / ".wheels"


def taskroot():
    from deploy import taskroot as module  # the repository root is on sys.path under pytest

    return module


def task_root(target: Path, python_version: str, model: Path, index: Path, *, with_ric: bool) -> Path:
    """A complete /var/task: dependencies for Linux x86_64 + this CPython, code, model, index."""
    tr = taskroot()
    tag = "cp" + python_version.replace(".", "")
    tr.deps(target, python_version=python_version, with_ric=with_ric, wheel_dir=WHEELS / tag)
    tr.code(target, python_version=python_version)
    tr.data(target, model=model, index=index)
    return target


def runtime_client_dir(python_version: str) -> Path:
    """awslambdaric alone, as the Lambda base image has it in /var/runtime (outside /var/task)."""
    tr = taskroot()
    target = ROOT / "build" / f"ric-py{python_version.replace('.', '')}"
    if not (target / "awslambdaric").is_dir():
        tag = "cp" + python_version.replace(".", "")
        tr.pip_install([tr.pinned_requirement("awslambdaric")], target, python_version, WHEELS / tag)
    return target


ZIP_PARTS = ROOT / "build" / "lambda-zip"


def zip_parts(model: Path, index: Path) -> dict[str, Path]:
    """The zip variant's three parts, built by the same `make -f ... build-<LogicalId>` calls
    that `sam build` makes (ARTIFACTS_DIR set), into build/lambda-zip/."""
    recipes = {
        "runtime-layer": ("layers/runtime/Makefile", "build-RuntimeLayer", {}),
        "model-layer": ("layers/model/Makefile", "build-ModelLayer", {"MODEL": str(model)}),
        "function": ("deploy/zip/Makefile", "build-SearchZipFunction", {"INDEX": str(index)}),
    }
    parts = {}
    for name, (makefile, target, variables) in recipes.items():
        out = ZIP_PARTS / name
        env = dict(os.environ, ARTIFACTS_DIR=str(out))
        args = [f"{k}={v}" for k, v in variables.items()] + [f"PYTHON={sys.executable}"]
        done = subprocess.run(
            ["make", "--no-print-directory", "-f", str(ROOT / makefile), target, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"{makefile} {target} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        parts[name] = out
    return parts
